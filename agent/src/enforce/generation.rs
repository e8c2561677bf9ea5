//! The policy for keys applications make: generation under the default
//! class (checked, forced attributes applied, a `ck::CKA_ID` of their own) and
//! derivation (derived keys are sensitive session keys of one purpose).

use cryptoki_sys as ck;
use keyward_protocol::Attribute;

use crate::clients::{Client, ObjectRef};
use crate::error::{Error, Result};
use crate::template::template_bool;

use crate::agent::Agent;

impl Agent {
    /// The policy for a key an application generates: under lab mode
    /// without a default class, none (a plain object); in strict mode
    /// without one, refused; otherwise the default class's generation rules
    /// are checked and its forced attributes applied to `templates` (one
    /// for a secret key, public then private for a pair), and the objects
    /// get a `ck::CKA_ID` of their own if the application gave none.
    pub(crate) fn generation_policy(
        &self,
        client: &Client,
        mechanism: u64,
        templates: &mut [&mut Vec<Attribute>],
    ) -> Result<Option<keyward_policy::KeyClass>> {
        let refuse = |refusal| self.refuse(client, "generation", refusal);
        let policy = self.policy();
        let Some(class) = policy.class_for_generation().map_err(refuse)? else {
            return Ok(None);
        };
        match templates {
            [one] => {
                let extractable = self.extractable_session_key(one);
                if extractable {
                    one.retain(|a| a.attr_type != ck::CKA_EXTRACTABLE);
                }
                let adj = crate::template::judge(one, |t| {
                    keyward_policy::check_generation(class, mechanism, t)
                })
                .map_err(refuse)?;
                crate::template::apply(one, &adj);
                if extractable {
                    one.retain(|a| a.attr_type != ck::CKA_EXTRACTABLE);
                    one.push(Attribute::bool(ck::CKA_EXTRACTABLE, true));
                }
            }
            [public, private] => {
                let adj = crate::template::judge(public, |p| {
                    crate::template::judge(private, |q| {
                        keyward_policy::check_key_pair_generation(class, mechanism, p, q)
                    })
                })
                .map_err(refuse)?;
                crate::template::apply(public, &adj.public);
                crate::template::apply(private, &adj.private);
            }
            _ => return Err(Error::ArgumentsBad),
        }
        let given = templates
            .iter()
            .find_map(|t| t.iter().find(|a| a.attr_type == ck::CKA_ID).cloned());
        let id = match given {
            Some(a) => a,
            None => {
                let mut id = vec![0u8; 16];
                getrandom::getrandom(&mut id)
                    .map_err(|_| Error::Backend(ck::CKR_FUNCTION_FAILED))?;
                Attribute::bytes(ck::CKA_ID, id)
            }
        };
        for t in templates.iter_mut() {
            t.retain(|a| a.attr_type != ck::CKA_ID);
            t.push(id.clone());
        }
        Ok(Some(class.clone()))
    }

    /// Whether `template` asks, in strict mode, for a secret session key
    /// (`ck::CKA_TOKEN` not true) that is `ck::CKA_EXTRACTABLE`: an
    /// application's own session key for envelope encryption. It stays
    /// sensitive and under every other rule of the class; its only way out
    /// of the HSM is `C_WrapKey` under a managed wrapping key the
    /// application is granted `wrap` on ([`Agent::check_envelope_wrap`]).
    fn extractable_session_key(&self, template: &[Attribute]) -> bool {
        let mut asked = template
            .iter()
            .filter(|a| a.attr_type == ck::CKA_EXTRACTABLE)
            .map(|a| a.as_bool())
            .peekable();
        asked.peek().is_some()
            && asked.all(|b| b == Some(true))
            && template_bool(template, ck::CKA_TOKEN) != Some(true)
            && self.policy().mode() == keyward_policy::Mode::Strict
    }

    /// In strict mode, `C_WrapKey` is envelope encryption only: the
    /// wrapping key is a managed key (its grant and purpose checked by the
    /// caller), and the key wrapped out is one of the application's own
    /// session keys (a session object it made, not a managed key, not a
    /// token object). Anything else is refused (`CKR_ACTION_PROHIBITED`,
    /// recorded). Lab mode leaves wrapping as it is.
    pub(crate) fn check_envelope_wrap(
        &self,
        client: &Client,
        wrapping: &ObjectRef,
        key: &ObjectRef,
    ) -> Result<()> {
        if self.policy().mode() != keyward_policy::Mode::Strict {
            return Ok(());
        }
        let why = if wrapping.managed.is_none() {
            "wrapping under a key that is not managed"
        } else if key.session.is_none() {
            "wrapping out a token object: only the application's own session keys may be wrapped"
        } else {
            return Ok(());
        };
        self.note_refusal(
            client,
            "wrapping out",
            None,
            None,
            ck::CKR_ACTION_PROHIBITED,
            why,
        );
        Err(Error::ActionProhibited)
    }

    /// The rules for a key an application unwraps: in strict mode, only
    /// with a managed key (its `unwrap` grant checked by the caller), and
    /// the unwrapped key is judged as a derived key is
    /// (`keyward_policy::check_derivation`): a sensitive, unextractable
    /// session object of one purpose owned by the application's session;
    /// `ck::CKA_TOKEN` true, `ck::CKA_EXTRACTABLE` true or `ck::CKA_SENSITIVE`
    /// false are refused (`CKR_ATTRIBUTE_VALUE_INVALID`). Long-term keys
    /// are restored by an administrator, never unwrapped by an application.
    /// Lab mode leaves unwrapping as it is.
    pub(crate) fn unwrap_policy(
        &self,
        client: &Client,
        unwrapping: &ObjectRef,
        template: &mut Vec<Attribute>,
    ) -> Result<()> {
        let policy = self.policy();
        if policy.mode() != keyward_policy::Mode::Strict {
            return Ok(());
        }
        if unwrapping.managed.is_none() {
            return self.strict_refusal(
                client,
                "unwrapping a key with a key that is not managed: keys are generated inside \
                 the HSM; restores are an administrator action"
                    .into(),
            );
        }
        let wrapping = matches!(
            policy.class_for_generation(),
            Ok(Some(c)) if c.purpose == keyward_policy::Purpose::Wrapping
        );
        let adj =
            crate::template::judge(template, |t| keyward_policy::check_derivation(wrapping, t))
                .map_err(|refusal| self.refuse(client, "unwrapping", refusal))?;
        crate::template::apply(template, &adj);
        Ok(())
    }

    /// The rules for a key derived from `base`: when `base` is a managed
    /// key, or in strict mode, the derived key is a sensitive,
    /// unextractable session object of one purpose, wrapping only where the
    /// class for application keys is for wrapping
    /// (`keyward_policy::check_derivation`); what the template asks against
    /// that is refused, the rest forced. A token object is refused rather
    /// than made a session object behind the application's back. Lab mode
    /// leaves keys derived from unmanaged keys as the application asked.
    pub(crate) fn derivation_policy(
        &self,
        client: &Client,
        base: &ObjectRef,
        template: &mut Vec<Attribute>,
    ) -> Result<()> {
        let policy = self.policy();
        if base.managed.is_none() && policy.mode() != keyward_policy::Mode::Strict {
            return Ok(());
        }
        let wrapping = matches!(
            policy.class_for_generation(),
            Ok(Some(c)) if c.purpose == keyward_policy::Purpose::Wrapping
        );
        let adj =
            crate::template::judge(template, |t| keyward_policy::check_derivation(wrapping, t))
                .map_err(|refusal| self.refuse(client, "derivation", refusal))?;
        crate::template::apply(template, &adj);
        Ok(())
    }
}
