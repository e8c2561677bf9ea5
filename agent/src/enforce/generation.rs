//! The policy for keys applications make: generation under the default
//! class (checked, forced attributes applied, a `ck::CKA_ID` of their own) and
//! derivation (derived keys are sensitive session keys of one purpose).

use cryptoki_sys as ck;
use keyward_protocol::Attribute;

use crate::clients::{Client, ObjectRef};
use crate::error::{Error, Result};

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
                let adj = crate::template::judge(one, |t| {
                    keyward_policy::check_generation(class, mechanism, t)
                })
                .map_err(refuse)?;
                crate::template::apply(one, &adj);
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
