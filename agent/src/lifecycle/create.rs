//! Creating keys: generation inside the HSM under the class's recipe,
//! journalled (the new `CKA_ID` pending in the state directory before the
//! HSM makes anything), recorded as one lifecycle change; keys
//! applications generate under the default class; the start-up recovery of
//! interrupted generations.

use std::time::SystemTime;

use cryptoki_sys as ck;
use keyward_inventory::{Actor, DateUpdates, KeyRecord, KeyVersion};
use keyward_policy::{check_generation, check_key_pair_generation, Algorithm, KeyClass};
use keyward_protocol::admin::{AdminErrorKind, KeyInfo};
use keyward_protocol::{Attribute, Mechanism, Value};

use crate::backend::{Backend, BackendObject};
use crate::keys::{secs, ManagedRef};
use crate::template::{apply, judge};
use crate::tokens::VirtualToken;

use super::hsm::*;
use super::*;

/// What [`first_version`] records.
pub(crate) struct NewKey<'a> {
    pub(crate) token: &'a str,
    pub(crate) name: &'a str,
    pub(crate) owner: &'a str,
    pub(crate) class: &'a KeyClass,
    pub(crate) algorithm: Algorithm,
    pub(crate) backend_id: &'a [u8],
    /// See [`crate::keys::fingerprint`].
    pub(crate) fingerprint: Option<[u8; 32]>,
    /// `None`: pre-activation (an administrator activates it); `Some`:
    /// active from then, with the class's cryptoperiod.
    pub(crate) active_since: Option<SystemTime>,
}

/// The inventory record of a new key of `k.class` and its version 1.
pub(crate) fn first_version(k: NewKey<'_>) -> (KeyRecord, KeyVersion) {
    let now = k.active_since.unwrap_or_else(crate::clock::now);
    let at = secs(now);
    let (state, dates) = match k.active_since {
        Some(since) => (KeyState::Active, period_dates(Some(k.class), since)),
        None => (KeyState::PreActivation, DateUpdates::default()),
    };
    let record = KeyRecord {
        id: 0,
        name: k.name.to_owned(),
        token: k.token.to_owned(),
        owner: k.owner.to_owned(),
        purpose: k.class.purpose,
        class: k.class.name.clone(),
        algorithm: k.algorithm,
        state,
        created_at: at,
        activated_at: k.active_since.map(secs),
        rotated_at: None,
        deactivated_at: None,
        protect_until: dates.protect_until,
        process_until: dates.process_until,
        next_rotation: dates.next_rotation,
        scope: k.class.scope.clone(),
        last_used_at: None,
        backup_allowed: k.class.backup,
        recovery_until: None,
        reason_code: None,
    };
    let version = KeyVersion {
        key_id: 0,
        version: 1,
        backend_id: k.backend_id.to_vec(),
        backend_label: k.name.to_owned(),
        state,
        created_at: at,
        deactivated_at: None,
        destroyed_at: None,
        fingerprint: k.fingerprint.map(|f| f.to_vec()),
    };
    (record, version)
}

/// Tries after the first attempt's `CKR_GENERAL_ERROR`, each after a
/// longer pause.
const GENERATION_RETRIES: u32 = 3;

/// `generate()`, and again (up to [`GENERATION_RETRIES`] times, after 20,
/// 40 and 60 ms) when the HSM answers `CKR_GENERAL_ERROR`: a backend whose
/// previous user was killed while it wrote a token object (SoftHSM2 after
/// a SIGKILL) can fail the next generation once, and SoftHSM2 fails a
/// generation now and then while applications search the same token (their
/// searches cannot wait for administrators). Once a try failed so, a
/// `CKR_TEMPLATE_INCONSISTENT` of the next one is the same trouble
/// (SoftHSM2 answers it to a try right after). Nothing was made by a failed
/// call; any other error stands.
fn once_more<T>(generate: impl Fn() -> crate::error::Result<T>) -> crate::error::Result<T> {
    let mut result = generate();
    for retry in 1..=GENERATION_RETRIES {
        let transient = match &result {
            Err(crate::error::Error::Backend(ck::CKR_GENERAL_ERROR)) => true,
            Err(crate::error::Error::Backend(ck::CKR_TEMPLATE_INCONSISTENT)) => retry > 1,
            _ => false,
        };
        if !transient {
            break;
        }
        log::warn!("HSM: a key generation failed ({retry} of {GENERATION_RETRIES}); trying again");
        std::thread::sleep(std::time::Duration::from_millis(20 * u64::from(retry)));
        result = generate();
    }
    result
}

impl Lifecycle {
    /// Generates a key of `class` in `token`'s HSM on a fresh session, as
    /// token objects with a pending label (see [`pending_label`]) and a new
    /// random `CKA_ID`, under the class's forced attributes. Returns the
    /// `CKA_ID` and the objects.
    pub(crate) fn generate(
        &self,
        token: &VirtualToken,
        backend: &dyn Backend,
        class: &KeyClass,
        alg: Algorithm,
        label: &str,
    ) -> AResult<(Vec<u8>, Vec<BackendObject>)> {
        super::dry_run::commit_point(
            || {
                format!(
                    "generate a {alg} key labelled {label:?} in the HSM of token {:?} (class {})",
                    token.config.label, class.name
                )
            },
            || keyward_protocol::plan::PlanOutcome::Done,
        )?;
        let id = random(16)?;
        // Until the inventory records the key, its CKA_ID is noted as
        // pending (durably, before the HSM makes anything): if the agent
        // dies in between, `recover_pending` destroys the objects at the
        // next start, and until then searches do not show them.
        token
            .state
            .add_pending(&hex::encode(&id))
            .map_err(|e| AdminError {
                kind: AdminErrorKind::Failed,
                message: format!("state directory: {e}"),
            })?;
        self.keys.set_pending(&token.config.label, &id, true);
        let common = |private: bool| {
            vec![
                Attribute::bool(ck::CKA_TOKEN, true),
                Attribute::bool(ck::CKA_PRIVATE, private),
                Attribute::bytes(ck::CKA_LABEL, label.as_bytes().to_vec()),
                Attribute::bytes(ck::CKA_ID, id.clone()),
            ]
        };
        let refused = |r: keyward_policy::Refusal| AdminError {
            kind: AdminErrorKind::Refused,
            message: format!("class {:?}: {r}", class.name),
        };
        let made = (|| -> AResult<Vec<BackendObject>> {
            let _no_scan = self.hsm_scan.lock().unwrap_or_else(|p| p.into_inner());
            let s = HsmSession::open(backend)?;
            Ok(match recipe(alg) {
                Recipe::Pair(mech, extra) => {
                    let mut public = common(false);
                    public.extend(extra);
                    let mut private = common(true);
                    let adj = judge(&public, |p| {
                        judge(&private, |q| check_key_pair_generation(class, mech, p, q))
                    })
                    .map_err(refused)?;
                    apply(&mut public, &adj.public);
                    apply(&mut private, &adj.private);
                    let (hpub, hpriv) = once_more(|| {
                        backend.generate_key_pair(
                            s.handle,
                            &Mechanism::plain(mech),
                            &public,
                            &private,
                        )
                    })
                    .map_err(|e| hsm_err(&format!("C_GenerateKeyPair {}", mech_name(mech)), e))?;
                    vec![hpub, hpriv]
                }
                Recipe::Secret(mech, len) => {
                    let mut template = common(true);
                    template.push(Attribute::ulong(ck::CKA_VALUE_LEN, len));
                    let adj =
                        judge(&template, |t| check_generation(class, mech, t)).map_err(refused)?;
                    apply(&mut template, &adj);
                    let h = once_more(|| {
                        backend.generate_key(s.handle, &Mechanism::plain(mech), &template)
                    })
                    .map_err(|e| hsm_err(&format!("C_GenerateKey {}", mech_name(mech)), e))?;
                    vec![h]
                }
            })
        })();
        match made {
            Ok(objects) => Ok((id, objects)),
            Err(e) => {
                self.end_pending(token, &id);
                Err(e)
            }
        }
    }

    /// Refuses (a conflict) a new key's `name` that a key on token `label`
    /// has already.
    pub(crate) fn refuse_taken_name(&self, label: &str, name: &str) -> AResult<()> {
        if self
            .keys
            .inventory()
            .key(label, name)
            .map_err(inv_err)?
            .is_some()
        {
            return fail(
                AdminErrorKind::Conflict,
                format!("a key {name:?} exists on token {label:?}"),
            );
        }
        Ok(())
    }

    /// Destroys objects generated for a change that could not be recorded.
    pub(crate) fn destroy_orphans(&self, backend: &dyn Backend, objects: &[BackendObject]) {
        match HsmSession::open(backend) {
            Ok(s) => s.destroy(objects),
            Err(e) => log::error!(
                "cannot destroy generated objects {} after a failure: {}",
                crate::backend::numbers(objects),
                e.message
            ),
        }
    }

    pub(crate) fn create_key(
        &self,
        (who, by): (&str, &Actor),
        name: &str,
        class_name: &str,
        algorithm: Option<Algorithm>,
        token: Option<&str>,
        owner: &str,
    ) -> AResult<KeyInfo> {
        check_new_key_name(name)?;
        let policy = self.policy();
        let Some(class) = policy.class(class_name) else {
            return fail(
                AdminErrorKind::NotFound,
                format!("no key class {class_name:?} in the policy"),
            );
        };
        let alg = match algorithm {
            Some(alg) => {
                if !class.algorithms.iter().any(|a| a.covers(alg)) {
                    let allowed: Vec<String> =
                        class.algorithms.iter().map(|a| a.to_string()).collect();
                    return fail(
                        AdminErrorKind::Refused,
                        format!(
                            "class {class_name:?} allows {}, not {alg}",
                            allowed.join(", ")
                        ),
                    );
                }
                alg
            }
            None => match class.algorithms.first() {
                Some(a) => *a,
                None => {
                    return fail(
                        AdminErrorKind::Refused,
                        format!("class {class_name:?} has no algorithm"),
                    )
                }
            },
        };
        let t = self.admin_token(token)?;
        let label = t.config.label.clone();
        self.refuse_taken_name(&label, name)?;
        let backend = self.backend(t)?;
        let (id, objects) = self.generate(t, backend.as_ref(), class, alg, name)?;
        let fingerprint = HsmSession::open(backend.as_ref())?.fingerprint(&objects);
        let (record, version) = first_version(NewKey {
            token: &label,
            name,
            owner,
            class,
            algorithm: alg,
            backend_id: &id,
            fingerprint,
            active_since: None,
        });
        let change = creation(record, version, who);
        let created = match self.apply_change(by, "create", "created", change) {
            Ok(done) => done.key,
            Err(e) => {
                self.destroy_orphans(backend.as_ref(), &objects);
                self.end_pending(t, &id);
                return Err(e);
            }
        };
        self.judged(&label, &objects, created.id, 1);
        self.refresh(created.id)?;
        self.end_pending(t, &id);
        log::info!(
            "key {label}/{name} created by {who}: class {class_name}, {alg}, CKA_ID {}",
            hex::encode(&id)
        );
        let view = self.keys.key(created.id).map_or_else(
            || fail(AdminErrorKind::Failed, "the new key is not in the view"),
            Ok,
        )?;
        self.info(&view)
    }

    /// Brings a key an application just generated (as token objects)
    /// under management as version 1 of a new key of `class`, active at
    /// once: the application made it to use it. Its name is its label (made
    /// unique with the `CKA_ID` when taken), its owner the application.
    pub(crate) fn manage_generated(
        &self,
        token: &VirtualToken,
        class: &KeyClass,
        objects: (BackendObject, Option<BackendObject>),
        label: Option<&str>,
        backend_id: &[u8],
        (owner, by): (&str, &Actor),
    ) -> AResult<ManagedRef> {
        let backend = self.backend(token)?;
        let s = HsmSession::open(backend.as_ref())?;
        let alg = algorithm_of(&s, objects.0, objects.1, class)?;
        let both: Vec<BackendObject> = objects.1.into_iter().chain([objects.0]).collect();
        let fingerprint = s.fingerprint(&both);
        drop(s);
        let inventory = self.keys.inventory();
        let base = label.filter(|l| !l.is_empty()).unwrap_or("key");
        let mut name = base.to_owned();
        if inventory
            .key(&token.config.label, &name)
            .map_err(inv_err)?
            .is_some()
        {
            name = format!("{base}-{}", hex::encode(backend_id));
        }
        let (record, version) = first_version(NewKey {
            token: &token.config.label,
            name: &name,
            owner,
            class,
            algorithm: alg,
            backend_id,
            fingerprint,
            active_since: Some(crate::clock::now()),
        });
        let who = format!("application {owner}");
        let created = self
            .apply_change(
                by,
                "create",
                "generated by the application",
                creation(record, version, &who),
            )?
            .key;
        self.judged(&token.config.label, &both, created.id, 1);
        self.refresh(created.id)?;
        log::info!(
            "key {}/{name} generated by {who}: class {}, {alg}, CKA_ID {}",
            token.config.label,
            class.name,
            hex::encode(backend_id)
        );
        Ok(ManagedRef {
            key_id: created.id,
            version: 1,
        })
    }

    /// Ends the pending note of a generation (recorded or undone).
    pub(crate) fn end_pending(&self, token: &VirtualToken, id: &[u8]) {
        if let Err(e) = token.state.remove_pending(&hex::encode(id)) {
            log::error!(
                "token {:?}: cannot clear a pending generation note: {e}",
                token.config.label
            );
        }
        self.keys.set_pending(&token.config.label, id, false);
    }

    /// Finishes what a crash interrupted: a key generation noted as pending
    /// whose `CKA_ID` the inventory does not know never completed, and its
    /// objects (if the HSM made any) are destroyed; one the inventory knows
    /// completed, and only its note is cleared. Run at start, before
    /// serving.
    pub fn recover_pending(&self) {
        for token in &self.tokens {
            let pending = token.state.pending();
            if !pending.is_empty() {
                self.destroy_husks(token);
            }
            for id_hex in pending {
                let Some(id) = unhex(&id_hex) else { continue };
                if self.keys.lookup(&token.config.label, &id).is_none() {
                    if let Ok(backend) = token.backend() {
                        match HsmSession::open(backend.as_ref()).and_then(|s| {
                            let objects = s.find(&[Attribute::bytes(ck::CKA_ID, id.clone())])?;
                            s.destroy(&objects);
                            Ok(objects.len())
                        }) {
                            Ok(n) => log::warn!(
                                "token {:?}: a key generation was interrupted (CKA_ID {id_hex}); {} destroyed",
                                token.config.label,
                                keyward_policy::plural(n, "object")
                            ),
                            Err(e) => {
                                log::error!(
                                    "token {:?}: cannot undo the interrupted generation of CKA_ID {id_hex}: {}",
                                    token.config.label,
                                    e.message
                                );
                                continue;
                            }
                        }
                    }
                }
                if let Err(e) = token.state.remove_pending(&id_hex) {
                    log::error!("token {:?}: {e}", token.config.label);
                }
            }
        }
    }

    /// Destroys the husks a generation cut off by a crash can leave on
    /// `token`'s backend (at start, before anything is served): key
    /// objects the HSM had created but not yet
    /// given the template's attributes or any key material (SoftHSM2
    /// writes an object's defaults, then the template, then the key, each
    /// on its own). Such a husk has an empty `CKA_ID`, so the recovery by
    /// `CKA_ID` cannot find it, and no key (EC parameters, RSA modulus or
    /// secret length), so no one can use it: nothing of value is lost.
    pub(crate) fn destroy_husks(&self, token: &VirtualToken) {
        let Ok(backend) = token.backend() else { return };
        let found = HsmSession::open(backend.as_ref()).and_then(|s| {
            let mut husks = Vec::new();
            for cko in [ck::CKO_PRIVATE_KEY, ck::CKO_PUBLIC_KEY, ck::CKO_SECRET_KEY] {
                // Not by CKA_TOKEN: a husk still has the default (false).
                // Nothing is served yet, so no session object is there.
                for o in s.find(&[Attribute::ulong(ck::CKA_CLASS, cko)])? {
                    let a = s.attrs(o, &[ck::CKA_ID, ck::CKA_KEY_TYPE])?;
                    let empty_id = match &a[0] {
                        Some(Value::Bytes(b)) => b.is_empty(),
                        None => true,
                        Some(_) => false,
                    };
                    if !empty_id {
                        continue;
                    }
                    let material = match a[1] {
                        Some(Value::Ulong(ck::CKK_EC))
                        | Some(Value::Ulong(ck::CKK_EC_EDWARDS))
                        | Some(Value::Ulong(ck::CKK_EC_MONTGOMERY)) => ck::CKA_EC_PARAMS,
                        Some(Value::Ulong(ck::CKK_RSA)) => ck::CKA_MODULUS,
                        _ if cko == ck::CKO_SECRET_KEY => ck::CKA_VALUE_LEN,
                        _ => continue,
                    };
                    let keyless = match s.attrs(o, &[material])?.pop().flatten() {
                        Some(Value::Bytes(b)) => b.is_empty(),
                        Some(Value::Ulong(n)) => n == 0,
                        _ => false,
                    };
                    if keyless {
                        husks.push(o);
                    }
                }
            }
            s.destroy(&husks);
            Ok(husks.len())
        });
        match found {
            Ok(0) => {}
            Ok(n) => log::warn!(
                "token {:?}: {} without CKA_ID or key material (cut off in their \
                 generation) destroyed",
                token.config.label,
                keyward_policy::plural(n, "key object")
            ),
            Err(e) => log::error!(
                "token {:?}: cannot look for objects cut off in their generation: {}",
                token.config.label,
                e.message
            ),
        }
    }
}

#[cfg(test)]
mod once_more_tests {
    use std::cell::Cell;

    use super::*;
    use crate::error::Error;

    #[test]
    fn a_general_error_is_tried_again_and_nothing_else_is() {
        let calls = Cell::new(0);
        let flaky = || {
            calls.set(calls.get() + 1);
            if calls.get() == 1 {
                Err(Error::Backend(ck::CKR_GENERAL_ERROR))
            } else {
                Ok(7)
            }
        };
        assert_eq!(once_more(flaky).ok(), Some(7));
        assert_eq!(calls.get(), 2);
        calls.set(0);
        let broken = || {
            calls.set(calls.get() + 1);
            Err::<u8, _>(Error::Backend(ck::CKR_GENERAL_ERROR))
        };
        assert!(matches!(
            once_more(broken),
            Err(Error::Backend(ck::CKR_GENERAL_ERROR))
        ));
        assert_eq!(calls.get(), 4, "three times again, not more");
        calls.set(0);
        let refused = || {
            calls.set(calls.get() + 1);
            Err::<u8, _>(Error::Backend(ck::CKR_MECHANISM_INVALID))
        };
        assert!(once_more(refused).is_err());
        assert_eq!(calls.get(), 1, "any other error stands");
        // A template SoftHSM2 calls inconsistent at once stands too.
        calls.set(0);
        let inconsistent = || {
            calls.set(calls.get() + 1);
            Err::<u8, _>(Error::Backend(ck::CKR_TEMPLATE_INCONSISTENT))
        };
        assert!(once_more(inconsistent).is_err());
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn a_generation_failed_under_load_is_tried_until_it_succeeds() {
        // What SoftHSM2 answered in the soak while applications searched
        // the token: CKR_GENERAL_ERROR, then CKR_TEMPLATE_INCONSISTENT to
        // the immediate retry; a later try succeeds.
        let calls = Cell::new(0);
        let answers = [
            Err(Error::Backend(ck::CKR_GENERAL_ERROR)),
            Err(Error::Backend(ck::CKR_TEMPLATE_INCONSISTENT)),
            Ok(7),
        ];
        let under_load = || {
            calls.set(calls.get() + 1);
            answers[calls.get() - 1]
        };
        assert_eq!(once_more(under_load).ok(), Some(7));
        assert_eq!(calls.get(), 3);
    }
}
