//! Key management calls: generation (journaled and recorded when the
//! policy manages the key), wrapping, unwrapping and derivation.

use std::sync::Arc;

use cryptoki_sys as ck;
use keyward_protocol::{
    AttrValue, Attribute, Mechanism, ObjectHandle, Response, SessionHandle, Value,
};

use crate::backend::BackendObject;
use crate::clients::{Client, ObjectRef, Session};
use crate::error::{Error, Result};
use keyward_policy::Operation;

use crate::agent::Agent;
use crate::enforce::refuse_private;
use crate::forward::objects::NewObjects;
use crate::keys::ManagedRef;
use crate::template::template_bool;

impl Agent {
    /// `Request::GenerateKey`.
    pub(crate) fn generate_key(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        mechanism: Mechanism,
        template: Vec<Attribute>,
    ) -> Result<Response> {
        let (s, login) = self.session(client, session)?;
        refuse_private(login, &template)?;
        self.refuse_reserved(client, s.slot, &template, "generation")?;
        let mut template = template;
        let class = self.generation_policy(client, mechanism.mechanism, &mut [&mut template])?;
        let m = self.mechanism(client, s.slot, &mechanism)?;
        let pending = self.journal_generation(s.slot, class.as_ref(), &[&template])?;
        let made = s.backend.generate_key(s.backend_session, &m, &template);
        let managed = made.and_then(|h| {
            self.manage(client, &s, class.as_ref(), &template, (h, None))
                .map(|m| (h, m))
        });
        if let Some(id) = &pending {
            self.lifecycle.end_pending(&self.tokens[s.slot], id);
        }
        let (h, managed) = managed?;
        let hint = template_bool(&template, ck::CKA_TOKEN).or(Some(false));
        self.adopt(
            client,
            session,
            &s,
            login,
            NewObjects {
                objects: &[h],
                token: hint,
                managed,
            },
        )
        .map(|v| Response::object(v[0]))
    }

    /// `Request::GenerateKeyPair`.
    pub(crate) fn generate_key_pair(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        mechanism: Mechanism,
        public_template: Vec<Attribute>,
        private_template: Vec<Attribute>,
    ) -> Result<Response> {
        let (s, login) = self.session(client, session)?;
        refuse_private(login, &public_template)?;
        refuse_private(login, &private_template)?;
        self.refuse_reserved(client, s.slot, &public_template, "generation")?;
        self.refuse_reserved(client, s.slot, &private_template, "generation")?;
        let (mut public_template, mut private_template) = (public_template, private_template);
        let class = self.generation_policy(
            client,
            mechanism.mechanism,
            &mut [&mut public_template, &mut private_template],
        )?;
        let m = self.mechanism(client, s.slot, &mechanism)?;
        let pending = self.journal_generation(
            s.slot,
            class.as_ref(),
            &[&public_template, &private_template],
        )?;
        let made =
            s.backend
                .generate_key_pair(s.backend_session, &m, &public_template, &private_template);
        let managed = made.and_then(|(hpub, hpriv)| {
            self.manage(
                client,
                &s,
                class.as_ref(),
                &private_template,
                (hpriv, Some(hpub)),
            )
            .map(|m| (hpub, hpriv, m))
        });
        if let Some(id) = &pending {
            self.lifecycle.end_pending(&self.tokens[s.slot], id);
        }
        let (hpub, hpriv, managed) = managed?;
        let hint_pub = template_bool(&public_template, ck::CKA_TOKEN).unwrap_or(false);
        let hint_priv = template_bool(&private_template, ck::CKA_TOKEN).unwrap_or(false);
        // One hint for both: known only when they agree.
        let hint = (hint_pub == hint_priv).then_some(hint_pub);
        let v = self.adopt(
            client,
            session,
            &s,
            login,
            NewObjects {
                objects: &[hpub, hpriv],
                token: hint,
                managed,
            },
        )?;
        Ok(Response::KeyPair {
            public: v[0],
            private: v[1],
        })
    }

    /// `Request::WrapKey`.
    pub(crate) fn wrap_key(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        mechanism: Mechanism,
        wrapping_key: ObjectHandle,
        key: ObjectHandle,
    ) -> Result<Response> {
        let (s, _, o) = self.session_objects(
            client,
            session,
            &[
                (wrapping_key, Error::WrappingKeyHandleInvalid),
                (key, Error::KeyHandleInvalid),
            ],
        )?;
        let _running = self.begin_key_use(client, &o[0], Operation::Wrap)?;
        self.refuse_managed(client, &o[1], "wrapping out")?;
        self.check_envelope_wrap(client, &o[0], &o[1])?;
        let m = self.mechanism(client, s.slot, &mechanism)?;
        let r = s
            .backend
            .wrap_key(s.backend_session, &m, o[0].backend, o[1].backend);
        let (r, _settled) = self.settle(client, r);
        self.key_use(
            client,
            &s,
            &o[0],
            Operation::Wrap.as_str(),
            Some(m.mechanism),
            &r,
        );
        // The key that left the HSM wrapped: an export.
        self.key_use(client, &s, &o[1], "export", Some(m.mechanism), &r);
        Ok(Response::Data(r?))
    }

    /// `Request::UnwrapKey`.
    pub(crate) fn unwrap_key(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        mechanism: Mechanism,
        unwrapping_key: ObjectHandle,
        wrapped_key: Vec<u8>,
        template: Vec<Attribute>,
    ) -> Result<Response> {
        let (s, login, o) = self.session_objects(
            client,
            session,
            &[(unwrapping_key, Error::UnwrappingKeyHandleInvalid)],
        )?;
        refuse_private(login, &template)?;
        self.refuse_reserved(client, s.slot, &template, "unwrapping")?;
        let mut template = template;
        self.unwrap_policy(client, &o[0], &mut template)?;
        let h = self.call_with_key(client, &s, &o[0], Operation::Unwrap, &mechanism, |m| {
            s.backend
                .unwrap_key(s.backend_session, m, o[0].backend, &wrapped_key, &template)
        })?;
        let hint = template_bool(&template, ck::CKA_TOKEN).or(Some(false));
        self.adopt_one(client, session, &s, login, h, hint)
            .map(Response::object)
    }

    /// `Request::DeriveKey`.
    pub(crate) fn derive_key(
        &self,
        client: &Arc<Client>,
        session: SessionHandle,
        mechanism: Mechanism,
        base_key: ObjectHandle,
        template: Vec<Attribute>,
    ) -> Result<Response> {
        let (s, login, o) =
            self.session_objects(client, session, &[(base_key, Error::KeyHandleInvalid)])?;
        refuse_private(login, &template)?;
        self.refuse_reserved(client, s.slot, &template, "derivation")?;
        let mut template = template;
        self.derivation_policy(client, &o[0], &mut template)?;
        let h = self.call_with_key(client, &s, &o[0], Operation::Derive, &mechanism, |m| {
            s.backend
                .derive_key(s.backend_session, m, o[0].backend, &template)
        })?;
        let hint = template_bool(&template, ck::CKA_TOKEN).or(Some(false));
        self.adopt_one(client, session, &s, login, h, hint)
            .map(Response::object)
    }

    /// A single call that uses key `o` for `op` with `mechanism` (unwrap,
    /// derive) and makes an object: the key checks, the mechanism checks,
    /// `call`, and its use recorded with the result. An object made by a
    /// use that is withheld (its key changed meanwhile, [`Agent::settle`])
    /// is destroyed in the HSM, never left there without a handle.
    pub(crate) fn call_with_key(
        &self,
        client: &Client,
        s: &Session,
        o: &ObjectRef,
        op: Operation,
        mechanism: &Mechanism,
        call: impl FnOnce(&Mechanism) -> Result<BackendObject>,
    ) -> Result<BackendObject> {
        let _running = self.begin_key_use(client, o, op)?;
        let m = self.mechanism(client, s.slot, mechanism)?;
        let made = call(&m);
        let made_object = made.as_ref().ok().copied();
        let (r, _settled) = self.settle(client, made);
        if let (Err(_), Some(object)) = (&r, made_object) {
            if let Err(e) = s.backend.destroy_object(s.backend_session, object) {
                log::warn!(
                    "a withheld {} left backend object {} that could not be destroyed: {e}",
                    op.as_str(),
                    crate::backend::numbers(&[object])
                );
            }
        }
        self.key_use(client, s, o, op.as_str(), Some(m.mechanism), &r);
        r
    }

    /// Journals an application's generation under `class` that makes token
    /// objects, as an administrator's is: the `ck::CKA_ID` that
    /// [`Agent::generation_policy`] put in the templates is noted as
    /// pending (durably) before the HSM makes anything, so that a crash
    /// before the inventory records the key leaves nothing behind: the
    /// next start destroys every object with that `ck::CKA_ID` (a public half
    /// made without its private half too). `Some(id)`: end it with
    /// `end_pending` once the key is recorded or undone.
    pub(crate) fn journal_generation(
        &self,
        slot: usize,
        class: Option<&keyward_policy::KeyClass>,
        templates: &[&[Attribute]],
    ) -> Result<Option<Vec<u8>>> {
        if class.is_none()
            || !templates
                .iter()
                .any(|t| template_bool(t, ck::CKA_TOKEN) == Some(true))
        {
            return Ok(None);
        }
        let id = templates
            .iter()
            .find_map(|t| t.iter().find(|a| a.attr_type == ck::CKA_ID))
            .and_then(|a| match &a.value {
                AttrValue::Leaf(Value::Bytes(b)) => Some(b.clone()),
                _ => None,
            });
        let Some(id) = id else { return Ok(None) };
        let token = &self.tokens[slot];
        if let Err(e) = token.state.add_pending(&hex::encode(&id)) {
            log::error!(
                "token {:?}: cannot note a generation as pending ({e}): refused",
                token.config.label
            );
            return Err(Error::Backend(ck::CKR_DEVICE_ERROR));
        }
        self.keys.set_pending(&token.config.label, &id, true);
        Ok(Some(id))
    }

    /// Records a key an application generated under `class` as a managed
    /// key (token objects only: a session key ends with its session). The
    /// application owns it; a failure to record it destroys the objects.
    pub(crate) fn manage(
        &self,
        client: &Client,
        s: &Session,
        class: Option<&keyward_policy::KeyClass>,
        template: &[Attribute],
        objects: (BackendObject, Option<BackendObject>),
    ) -> Result<Option<ManagedRef>> {
        let Some(class) = class else { return Ok(None) };
        if template_bool(template, ck::CKA_TOKEN) != Some(true) {
            return Ok(None);
        }
        let id = match template
            .iter()
            .find(|a| a.attr_type == ck::CKA_ID)
            .map(|a| &a.value)
        {
            Some(AttrValue::Leaf(Value::Bytes(b))) => b.clone(),
            _ => return Ok(None),
        };
        let label = template
            .iter()
            .find(|a| a.attr_type == ck::CKA_LABEL)
            .and_then(|a| match &a.value {
                AttrValue::Leaf(Value::Bytes(b)) => String::from_utf8(b.clone()).ok(),
                _ => None,
            });
        let token = &self.tokens[s.slot];
        match self.lifecycle.manage_generated(
            token,
            class,
            objects,
            label.as_deref(),
            &id,
            (&client.application, &client.actor),
        ) {
            Ok(m) => Ok(Some(m)),
            Err(e) => {
                log::error!(
                    "{}: the key it generated could not be recorded ({}); destroying it",
                    client.peer,
                    e.message
                );
                let _ = s.backend.destroy_object(s.backend_session, objects.0);
                if let Some(p) = objects.1 {
                    let _ = s.backend.destroy_object(s.backend_session, p);
                }
                Err(Error::Backend(ck::CKR_DEVICE_ERROR))
            }
        }
    }
}
