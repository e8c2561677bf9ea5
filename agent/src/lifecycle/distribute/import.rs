//! `keyward key import`: an export file unwrapped into the HSM as a new
//! managed key (see the [parent](super) for the order of the steps).

use super::*;

/// What an import makes, destroyed unless it is recorded.
struct Made<'a, 'b> {
    scratch: Scratch<'a, 'b>,
    /// `(class, object)`: the public half first for a key pair.
    objects: Vec<(u64, BackendObject)>,
}

/// The class an import file's key joins, refused when its purpose or
/// algorithms do not fit the record.
fn fitting_class<'p>(
    policy: &'p keyward_policy::Policy,
    class_name: &str,
    rec: &file::Record,
) -> AResult<&'p KeyClass> {
    let Some(class) = policy.class(class_name) else {
        return fail(
            AdminErrorKind::NotFound,
            format!("no key class {class_name:?} in the policy"),
        );
    };
    let fits = class.purpose == rec.purpose
        && rec.algorithm.fits(class.purpose)
        && class.algorithms.iter().any(|a| a.covers(rec.algorithm));
    if !fits {
        let allowed: Vec<String> = class.algorithms.iter().map(|a| a.to_string()).collect();
        return refused(format!(
            "the file holds a {} key for {}: class {class_name:?} is for {} with {}",
            rec.algorithm,
            rec.purpose,
            class.purpose,
            allowed.join(", ")
        ));
    }
    Ok(class)
}

/// The file, parsed, with a `CKA_ID` a key may have.
fn parsed(bytes: &[u8]) -> AResult<file::Parsed> {
    let parsed = file::parse(bytes).map_err(|m| AdminError {
        kind: AdminErrorKind::Invalid,
        message: m,
    })?;
    let id = &parsed.body.record.backend_id;
    if id.is_empty() || id.len() > 64 {
        return fail(
            AdminErrorKind::Invalid,
            format!("not a valid export file: a CKA_ID of {} bytes", id.len()),
        );
    }
    Ok(parsed)
}

/// Where an imported key comes from, for its history.
fn provenance(body: &file::Body, bytes: &[u8], why: &str) -> String {
    let rec = &body.record;
    let text = format!(
        "imported from {}/{} version {} on {} (request {}, asked by {}, approved by {}), \
         file SHA-256 {}: {why}",
        body.source.token,
        rec.name,
        rec.version,
        body.source.host,
        body.source.request_id,
        body.source.requester,
        body.source.approvers.join(", "),
        sha256_hex(bytes),
    );
    text.chars().take(4096).collect()
}

impl Lifecycle {
    /// Imports export file `bytes` as a key of `class` named `name` (else
    /// the record's) on `token`, by `who` for `why`.
    pub(super) fn import_key(
        &self,
        (who, by): (&str, &Actor),
        bytes: &[u8],
        (class_name, name, token): (&str, Option<&str>, Option<&str>),
        why: &str,
    ) -> AResult<KeyResponse> {
        let parsed = parsed(bytes)?;
        let rec = &parsed.body.record;
        let policy = self.policy();
        let class = fitting_class(&policy, class_name, rec)?;
        let public = Self::recorded_public(rec)?;
        let t = self.admin_token(token)?;
        let label = t.config.label.clone();
        // A name given here is new and follows the rule; the recorded
        // name is kept as it is (like a restore).
        if let Some(given) = name {
            check_new_key_name(given)?;
        }
        let name = name.unwrap_or(&rec.name).to_owned();
        if name.is_empty() {
            return fail(AdminErrorKind::Invalid, "a key needs a name");
        }
        self.refuse_taken_name(&label, &name)?;
        let backend = self.backend(t)?;
        let s = HsmSession::open(backend.as_ref())?;
        let recipient = self.recipient_of(t, &s, &parsed.body.recipient_sha256)?;
        if self.keys.lookup(&label, &rec.backend_id).is_some()
            || !s
                .find(&[Attribute::bytes(ck::CKA_ID, rec.backend_id.clone())])?
                .is_empty()
        {
            return fail(
                AdminErrorKind::Conflict,
                format!(
                    "token {label:?} holds objects with CKA_ID {} already (imported before?)",
                    hex::encode(&rec.backend_id)
                ),
            );
        }
        let mut scratch = Scratch {
            s: &s,
            objects: Vec::new(),
        };
        let transport = Self::unseal(&mut scratch, recipient, &parsed)?;
        super::super::dry_run::commit_point(
            || {
                format!(
                    "the {} key of the file is unwrapped into the HSM of token {label:?} as {name:?} \
                     (class {}, CKA_ID {}) and recorded",
                    rec.algorithm,
                    class.name,
                    hex::encode(&rec.backend_id)
                )
            },
            || keyward_protocol::plan::PlanOutcome::Done,
        )?;
        // Noted as pending before the HSM makes anything (see `generate`).
        let id = rec.backend_id.clone();
        t.state
            .add_pending(&hex::encode(&id))
            .map_err(|e| AdminError {
                kind: AdminErrorKind::Failed,
                message: format!("state directory: {e}"),
            })?;
        self.keys.set_pending(&label, &id, true);
        let made = self.unwrap_recorded(
            (&s, transport),
            (class, &name, &public),
            (rec, &parsed.body.wrapped_key),
        );
        drop(scratch);
        let recorded = made.and_then(|made| {
            let new = NewKey {
                token: &label,
                name: &name,
                owner: who,
                class,
                algorithm: rec.algorithm,
                backend_id: &id,
                fingerprint: None,
                active_since: None,
            };
            self.record_import(made, new, by, &provenance(&parsed.body, bytes, why))
        });
        self.end_pending(t, &id);
        let view = recorded?;
        Ok(KeyResponse::Key(Box::new(self.info(&view)?)))
    }

    /// Unwraps the transport key with the recipient's private key
    /// `recipient` into a session object (kept in `scratch`), and checks
    /// the file's seal with it.
    fn unseal(
        scratch: &mut Scratch<'_, '_>,
        recipient: BackendObject,
        parsed: &file::Parsed,
    ) -> AResult<BackendObject> {
        let s = scratch.s;
        let body = &parsed.body;
        let Some(mechanism) = oaep(body.oaep_hash) else {
            return fail(
                AdminErrorKind::Invalid,
                format!(
                    "not a valid export file: RSA-OAEP with hash {} is not one keyward uses",
                    mech_name(body.oaep_hash)
                ),
            );
        };
        let transport = s
            .backend
            .unwrap_key(
                s.handle,
                &mechanism,
                recipient,
                &body.wrapped_transport,
                &unwrapped_transport_template(),
            )
            .map_err(|e| AdminError {
                kind: AdminErrorKind::Refused,
                message: format!(
                    "the transport key does not unwrap with the recipient key ({e}): the file is \
                     damaged or was not made for this key; nothing imported"
                ),
            })?;
        scratch.keep(transport);
        let sealed = s
            .backend
            .op_init(s.handle, Op::Verify, &cmac(), Some(transport))
            .and_then(|()| {
                s.backend
                    .verify(s.handle, &parsed.sealed_bytes, &parsed.seal)
            });
        if let Err(e) = sealed {
            return refused(format!(
                "the export file's seal does not verify ({e}): it was changed after the export \
                 or is damaged; nothing imported"
            ));
        }
        Ok(transport)
    }

    /// Records what `made` holds as the new key `new` (its fingerprint
    /// taken here), with `provenance` as its reason; destroys it when the
    /// change cannot be recorded.
    fn record_import(
        &self,
        mut made: Made<'_, '_>,
        mut new: NewKey<'_>,
        by: &Actor,
        provenance: &str,
    ) -> AResult<std::sync::Arc<crate::keys::KeyView>> {
        let objects: Vec<BackendObject> = made.objects.iter().map(|(_, o)| *o).collect();
        new.fingerprint = made.scratch.s.fingerprint(&objects);
        let (label, name, who) = (
            new.token.to_owned(),
            new.name.to_owned(),
            new.owner.to_owned(),
        );
        let (record, version) = first_version(new);
        let mut change = creation(record, version, &who);
        change.reason = provenance.to_owned();
        let created = self.apply_change(by, "import", provenance, change)?.key;
        made.scratch.objects.clear();
        self.judged(&label, &objects, created.id, 1);
        self.refresh(created.id)?;
        log::warn!("key {label}/{name} {provenance}");
        self.keys.key(created.id).map_or_else(
            || fail(AdminErrorKind::Failed, "the new key is not in the view"),
            Ok,
        )
    }

    /// The public key a key pair's record carries (`None` for a secret
    /// key), checked against the record's algorithm.
    fn recorded_public(rec: &file::Record) -> AResult<Option<PublicParts>> {
        let invalid = |m: String| AdminError {
            kind: AdminErrorKind::Invalid,
            message: format!("not a valid export file: {m}"),
        };
        match (&rec.public_key, is_secret(rec.algorithm)) {
            (None, true) => Ok(None),
            (Some(_), true) => Err(invalid("a secret key with a public key".into())),
            (None, false) => Err(invalid(format!(
                "a {} key without its public key",
                rec.algorithm
            ))),
            (Some(der), false) => {
                let parts = PublicParts::from_spki(der).map_err(invalid)?;
                if parts.algorithm() != Some(rec.algorithm) {
                    return Err(invalid(format!(
                        "the public key is not a {} key",
                        rec.algorithm
                    )));
                }
                Ok(Some(parts))
            }
        }
    }

    /// The private half of the managed RSA wrapping key on `t` whose public
    /// key's SPKI has SHA-256 `sha256`.
    fn recipient_of(
        &self,
        t: &VirtualToken,
        s: &HsmSession<'_>,
        sha256: &[u8],
    ) -> AResult<BackendObject> {
        let label = &t.config.label;
        for key in self.keys.all() {
            let r = &key.record;
            if &r.token != label
                || r.purpose != keyward_policy::Purpose::Wrapping
                || !matches!(r.algorithm, Algorithm::Rsa { .. })
                || matches!(r.state, KeyState::Destroyed | KeyState::Compromised)
            {
                continue;
            }
            for v in key
                .versions
                .iter()
                .filter(|v| !matches!(v.state, KeyState::Destroyed | KeyState::Compromised))
            {
                let m = ManagedRef {
                    key_id: r.id,
                    version: v.version,
                };
                let Some(&public) = s
                    .genuine(&self.keys, label, &v.backend_id, ck::CKO_PUBLIC_KEY, m)?
                    .first()
                else {
                    continue;
                };
                let Ok(spki) = public_parts(s, public).and_then(|p| {
                    p.to_spki().map_err(|m| AdminError {
                        kind: AdminErrorKind::Failed,
                        message: m,
                    })
                }) else {
                    continue;
                };
                if sha2::Sha256::digest(&spki).as_slice() != sha256 {
                    continue;
                }
                return match s
                    .genuine(&self.keys, label, &v.backend_id, ck::CKO_PRIVATE_KEY, m)?
                    .first()
                {
                    Some(&o) => Ok(o),
                    None => fail(
                        AdminErrorKind::Failed,
                        format!(
                            "the recipient key {label}/{} version {} has no private key on the HSM",
                            r.name, v.version
                        ),
                    ),
                };
            }
        }
        fail(
            AdminErrorKind::NotFound,
            format!(
                "no managed RSA wrapping key on token {label:?} has the recipient's public key \
                 (SPKI SHA-256 {}): the file was made for another deployment",
                hex::encode(sha256)
            ),
        )
    }

    /// Unwraps the key under `transport` into token objects with the
    /// attributes `class` gives a generated key, creates its public half
    /// from the record, and proves it works; destroys all of it on failure.
    fn unwrap_recorded<'a, 'b>(
        &self,
        (s, transport): (&'a HsmSession<'b>, BackendObject),
        (class, name, public): (&KeyClass, &str, &Option<PublicParts>),
        (rec, wrapped): (&file::Record, &[u8]),
    ) -> AResult<Made<'a, 'b>> {
        let (mut unwrap, public_template) = templates(class, name, rec, public)?;
        let mut made = Made {
            scratch: Scratch {
                s,
                objects: Vec::new(),
            },
            objects: Vec::new(),
        };
        if let (Some(mut template), Some(parts)) = (public_template, public) {
            template.push(Attribute::ulong(ck::CKA_CLASS, ck::CKO_PUBLIC_KEY));
            template.extend(parts.attributes().map_err(|m| AdminError {
                kind: AdminErrorKind::Invalid,
                message: format!("not a valid export file: {m}"),
            })?);
            let o = s
                .backend
                .create_object(s.handle, &template)
                .map_err(|e| hsm_err("C_CreateObject (the public key)", e))?;
            made.objects
                .push((ck::CKO_PUBLIC_KEY, made.scratch.keep(o)));
        }
        let (cko, key_type) = match (public, rec.algorithm) {
            (Some(PublicParts::Rsa { .. }), _) => (ck::CKO_PRIVATE_KEY, ck::CKK_RSA),
            (Some(PublicParts::Ec { .. }), _) => {
                let t = public
                    .as_ref()
                    .and_then(|p| p.attributes().ok())
                    .and_then(|a| a.into_iter().find(|a| a.attr_type == ck::CKA_KEY_TYPE))
                    .and_then(|a| a.as_ulong())
                    .unwrap_or(ck::CKK_EC);
                (ck::CKO_PRIVATE_KEY, t)
            }
            (None, Algorithm::Aes { .. }) => (ck::CKO_SECRET_KEY, ck::CKK_AES),
            (None, _) => (ck::CKO_SECRET_KEY, ck::CKK_GENERIC_SECRET),
        };
        unwrap.push(Attribute::ulong(ck::CKA_CLASS, cko));
        unwrap.push(Attribute::ulong(ck::CKA_KEY_TYPE, key_type));
        let o = s
            .backend
            .unwrap_key(s.handle, &kwp(), transport, wrapped, &unwrap)
            .map_err(|e| AdminError {
                kind: AdminErrorKind::Refused,
                message: format!(
                    "the key does not unwrap ({e}): the file is damaged or was changed; nothing \
                     imported"
                ),
            })?;
        made.objects.push((cko, made.scratch.keep(o)));
        let probe_version = KeyVersion {
            key_id: 0,
            version: 1,
            backend_id: rec.backend_id.clone(),
            backend_label: name.to_owned(),
            state: KeyState::PreActivation,
            created_at: 0,
            deactivated_at: None,
            destroyed_at: None,
            fingerprint: None,
        };
        let proven = self.prove_objects(
            s,
            &probe_version,
            made.objects.clone(),
            (rec.purpose, rec.algorithm),
        );
        match proven {
            Ok(detail) => {
                log::info!("imported key {name}: {detail}");
                Ok(made)
            }
            Err(e) => refused(format!(
                "the imported key does not work with its recorded public key ({}); nothing \
                 imported",
                e.message
            )),
        }
    }
}

/// The unwrap template of the key (token object, the class's forced
/// attributes as for a generation, without what only a generation takes)
/// and, for a key pair, the public object's template (without its key).
fn templates(
    class: &KeyClass,
    name: &str,
    rec: &file::Record,
    public: &Option<PublicParts>,
) -> AResult<(Vec<Attribute>, Option<Vec<Attribute>>)> {
    let common = |private: bool| {
        vec![
            Attribute::bool(ck::CKA_TOKEN, true),
            Attribute::bool(ck::CKA_PRIVATE, private),
            Attribute::bytes(ck::CKA_LABEL, name.as_bytes().to_vec()),
            Attribute::bytes(ck::CKA_ID, rec.backend_id.clone()),
        ]
    };
    let refused = |r: keyward_policy::Refusal| AdminError {
        kind: AdminErrorKind::Refused,
        message: format!("class {:?}: {r}", class.name),
    };
    let generation_only = [
        ck::CKA_VALUE_LEN,
        ck::CKA_MODULUS_BITS,
        ck::CKA_PUBLIC_EXPONENT,
        ck::CKA_EC_PARAMS,
    ];
    let strip = |mut t: Vec<Attribute>| {
        t.retain(|a| !generation_only.contains(&a.attr_type));
        t
    };
    match (recipe(rec.algorithm), public) {
        (Recipe::Secret(mech, len), None) => {
            let mut template = common(true);
            template.push(Attribute::ulong(ck::CKA_VALUE_LEN, len));
            let adj = judge(&template, |t| check_generation(class, mech, t)).map_err(refused)?;
            apply(&mut template, &adj);
            Ok((strip(template), None))
        }
        (Recipe::Pair(mech, extra), Some(_)) => {
            let mut public = common(false);
            public.extend(extra);
            let mut private = common(true);
            let adj = judge(&public, |p| {
                judge(&private, |q| check_key_pair_generation(class, mech, p, q))
            })
            .map_err(refused)?;
            apply(&mut public, &adj.public);
            apply(&mut private, &adj.private);
            Ok((strip(private), Some(strip(public))))
        }
        _ => fail(
            AdminErrorKind::Invalid,
            format!(
                "not a valid export file: a {} key {} a public key",
                rec.algorithm,
                if public.is_some() { "with" } else { "without" }
            ),
        ),
    }
}
