//! The HSM as the lifecycle uses it: a session of its own per action
//! (`HsmSession`, closed when dropped), what to generate for each
//! algorithm, and the names and checks of what it holds.

use cryptoki_sys as ck;
use keyward_policy::{Algorithm, Curve, CurveParams, KeyClass};
use keyward_protocol::admin::AdminErrorKind;
use keyward_protocol::{AttrResult, AttrValue, Attribute, MechParam, Mechanism, Op, Value};

use crate::backend::{Backend, BackendObject, BackendSession};
use crate::keys::{KeyView, ManagedRef};

use super::*;

pub(crate) fn random(n: usize) -> AResult<Vec<u8>> {
    let mut v = vec![0u8; n];
    getrandom::getrandom(&mut v).map_err(|e| AdminError {
        kind: AdminErrorKind::Failed,
        message: format!("no randomness: {e}"),
    })?;
    Ok(v)
}

/// A backend session opened for one administrative action and closed when
/// dropped (objects it made that are not token objects go with it).
pub(crate) struct HsmSession<'b> {
    pub(crate) backend: &'b dyn Backend,
    pub(crate) handle: BackendSession,
}

impl<'b> HsmSession<'b> {
    pub(crate) fn open(backend: &'b dyn Backend) -> AResult<HsmSession<'b>> {
        let handle = backend
            .open_session(true)
            .map_err(|e| hsm_err("C_OpenSession", e))?;
        Ok(HsmSession { backend, handle })
    }

    pub(crate) fn find(&self, template: &[Attribute]) -> AResult<Vec<BackendObject>> {
        self.backend
            .find_objects(self.handle, template)
            .map_err(|e| hsm_err("C_FindObjects", e))
    }

    /// The objects of class `cko` with `CKA_ID` `id`.
    pub(crate) fn by_id(&self, id: &[u8], cko: u64) -> AResult<Vec<BackendObject>> {
        self.find(&[
            Attribute::ulong(ck::CKA_CLASS, cko),
            Attribute::bytes(ck::CKA_ID, id.to_vec()),
        ])
    }

    /// The objects of class `cko` that are version `m` (`CKA_ID` `id`) of a
    /// managed key on `token`: objects planted with its `CKA_ID` are left
    /// out ([`crate::keys::ManagedKeys::is_genuine`]).
    pub(crate) fn genuine(
        &self,
        keys: &crate::keys::ManagedKeys,
        token: &str,
        id: &[u8],
        cko: u64,
        m: ManagedRef,
    ) -> AResult<Vec<BackendObject>> {
        Ok(self
            .by_id(id, cko)?
            .into_iter()
            .filter(|&o| keys.is_genuine(token, self.backend, self.handle, o, m))
            .collect())
    }

    /// Whether `object` is a certificate of `key`'s own public key.
    pub(crate) fn is_certificate_of(&self, object: BackendObject, key: &KeyView) -> bool {
        crate::keys::is_certificate_of(self.backend, self.handle, object, key)
    }

    pub(crate) fn attrs(
        &self,
        object: BackendObject,
        types: &[u64],
    ) -> AResult<Vec<Option<Value>>> {
        let results = self
            .backend
            .get_attributes(self.handle, object, types)
            .map_err(|e| hsm_err("C_GetAttributeValue", e))?;
        Ok(results
            .into_iter()
            .map(|r| match r {
                AttrResult::Value(AttrValue::Leaf(v)) => Some(v),
                _ => None,
            })
            .collect())
    }

    pub(crate) fn ulong(&self, object: BackendObject, attr: u64) -> AResult<Option<u64>> {
        Ok(match self.attrs(object, &[attr])?.pop().flatten() {
            Some(Value::Ulong(v)) => Some(v),
            _ => None,
        })
    }

    pub(crate) fn bytes(&self, object: BackendObject, attr: u64) -> AResult<Option<Vec<u8>>> {
        Ok(match self.attrs(object, &[attr])?.pop().flatten() {
            Some(Value::Bytes(v)) => Some(v),
            _ => None,
        })
    }

    /// The fingerprint of the key made of `objects` (the first that shows
    /// one: the public half of a pair, the secret key).
    pub(crate) fn fingerprint(&self, objects: &[BackendObject]) -> Option<[u8; 32]> {
        let fp = objects
            .iter()
            .find_map(|&o| crate::keys::fingerprint(self.backend, self.handle, o));
        if fp.is_none() {
            log::warn!(
                "backend objects {} show no public value or check value: \
                 recognised by their CKA_ID alone",
                crate::backend::numbers(objects)
            );
        }
        fp
    }

    pub(crate) fn destroy(&self, objects: &[BackendObject]) {
        for &o in objects {
            if let Err(e) = self.backend.destroy_object(self.handle, o) {
                log::error!("cannot destroy backend object {o} after a failure: {e}");
            }
        }
    }

    /// `C_*Init` then the single-part call.
    pub(crate) fn run(
        &self,
        op: Op,
        mech: &Mechanism,
        key: BackendObject,
        data: &[u8],
    ) -> AResult<Vec<u8>> {
        let what = format!("{op:?} with {}", mech_name(mech.mechanism));
        self.backend
            .op_init(self.handle, op, mech, Some(key))
            .map_err(|e| hsm_err(&what, e))?;
        self.backend
            .single(self.handle, op, data)
            .map_err(|e| hsm_err(&what, e))
    }

    pub(crate) fn verify(
        &self,
        mech: &Mechanism,
        key: BackendObject,
        data: &[u8],
        sig: &[u8],
    ) -> AResult<()> {
        let what = format!("verify with {}", mech_name(mech.mechanism));
        self.backend
            .op_init(self.handle, Op::Verify, mech, Some(key))
            .map_err(|e| hsm_err(&what, e))?;
        self.backend
            .verify(self.handle, data, sig)
            .map_err(|e| hsm_err(&what, e))
    }
}

impl Drop for HsmSession<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.backend.close_session(self.handle) {
            log::warn!("cannot close admin backend session {}: {e}", self.handle);
        }
    }
}

pub(crate) fn mech_name(m: u64) -> String {
    keyward_policy::mechanism_name(m).map_or_else(|| format!("{m:#x}"), str::to_owned)
}

/// What generates a key of `alg`: a key pair (mechanism, public-only
/// attributes) or a secret key (mechanism, `CKA_VALUE_LEN`).
pub(crate) enum Recipe {
    Pair(u64, Vec<Attribute>),
    Secret(u64, u64),
}

pub(crate) fn recipe(alg: Algorithm) -> Recipe {
    let ec = |mech, curve: Curve| {
        Recipe::Pair(
            mech,
            vec![Attribute::bytes(ck::CKA_EC_PARAMS, curve.ec_params())],
        )
    };
    match alg {
        Algorithm::Ec(curve) => ec(ck::CKM_EC_KEY_PAIR_GEN, curve),
        Algorithm::Ed25519 => ec(ck::CKM_EC_EDWARDS_KEY_PAIR_GEN, Curve::Ed25519),
        Algorithm::Ed448 => ec(ck::CKM_EC_EDWARDS_KEY_PAIR_GEN, Curve::Ed448),
        Algorithm::X25519 => ec(ck::CKM_EC_MONTGOMERY_KEY_PAIR_GEN, Curve::X25519),
        Algorithm::X448 => ec(ck::CKM_EC_MONTGOMERY_KEY_PAIR_GEN, Curve::X448),
        Algorithm::Rsa { min_bits } => Recipe::Pair(
            ck::CKM_RSA_PKCS_KEY_PAIR_GEN,
            vec![
                Attribute::ulong(ck::CKA_MODULUS_BITS, u64::from(min_bits)),
                Attribute::bytes(ck::CKA_PUBLIC_EXPONENT, vec![0x01, 0x00, 0x01]),
            ],
        ),
        Algorithm::Aes { min_bits } => Recipe::Secret(ck::CKM_AES_KEY_GEN, u64::from(min_bits / 8)),
        Algorithm::Generic { min_bits } | Algorithm::Hmac { min_bits } => {
            Recipe::Secret(ck::CKM_GENERIC_SECRET_KEY_GEN, u64::from(min_bits / 8))
        }
    }
}

/// The algorithm of a backend key, from its type and size or curve.
pub(crate) fn algorithm_of(
    s: &HsmSession<'_>,
    object: BackendObject,
    public: Option<BackendObject>,
    class: &KeyClass,
) -> AResult<Algorithm> {
    let key_type = s.ulong(object, ck::CKA_KEY_TYPE)?;
    let curve = || -> AResult<Option<Curve>> {
        let params = match s.bytes(object, ck::CKA_EC_PARAMS)? {
            Some(p) => Some(p),
            None => match public {
                Some(p) => s.bytes(p, ck::CKA_EC_PARAMS)?,
                None => None,
            },
        };
        Ok(params.as_deref().and_then(Curve::from_ec_params))
    };
    let value_bits = || -> AResult<Option<u32>> {
        Ok(s.ulong(object, ck::CKA_VALUE_LEN)?
            .map(|n| u32::try_from(n.saturating_mul(8)).unwrap_or(u32::MAX)))
    };
    let alg = match key_type {
        Some(ck::CKK_EC) => match curve()? {
            Some(c @ (Curve::P256 | Curve::P384 | Curve::P521)) => Some(Algorithm::Ec(c)),
            _ => None,
        },
        Some(ck::CKK_EC_EDWARDS) => match curve()? {
            Some(Curve::Ed25519) => Some(Algorithm::Ed25519),
            Some(Curve::Ed448) => Some(Algorithm::Ed448),
            _ => None,
        },
        Some(ck::CKK_EC_MONTGOMERY) => match curve()? {
            Some(Curve::X25519) => Some(Algorithm::X25519),
            Some(Curve::X448) => Some(Algorithm::X448),
            _ => None,
        },
        Some(ck::CKK_RSA) => {
            let modulus = match s.bytes(object, ck::CKA_MODULUS)? {
                Some(m) => Some(m),
                None => match public {
                    Some(p) => s.bytes(p, ck::CKA_MODULUS)?,
                    None => None,
                },
            };
            modulus.map(|m| {
                let m: &[u8] = &m;
                let lead = m.iter().take_while(|b| **b == 0).count();
                Algorithm::Rsa {
                    min_bits: u32::try_from((m.len() - lead) * 8).unwrap_or(u32::MAX),
                }
            })
        }
        Some(ck::CKK_AES) => value_bits()?.map(|min_bits| Algorithm::Aes { min_bits }),
        Some(
            ck::CKK_GENERIC_SECRET
            | ck::CKK_SHA256_HMAC
            | ck::CKK_SHA384_HMAC
            | ck::CKK_SHA512_HMAC,
        ) => value_bits()?.map(|bits| {
            if class
                .algorithms
                .iter()
                .any(|a| matches!(a, Algorithm::Hmac { .. }))
            {
                Algorithm::Hmac { min_bits: bits }
            } else {
                Algorithm::Generic { min_bits: bits }
            }
        }),
        _ => None,
    };
    let Some(alg) = alg else {
        return fail(
            AdminErrorKind::Refused,
            format!(
                "the object's key type ({}) or its size or curve is not one keyward manages",
                key_type.map_or_else(|| "none".into(), key_type_name)
            ),
        );
    };
    let fits = alg.fits(class.purpose)
        && class.algorithms.iter().any(|allowed| match (allowed, alg) {
            (Algorithm::Rsa { min_bits: m }, Algorithm::Rsa { min_bits: b })
            | (Algorithm::Aes { min_bits: m }, Algorithm::Aes { min_bits: b })
            | (Algorithm::Hmac { min_bits: m }, Algorithm::Hmac { min_bits: b })
            | (Algorithm::Generic { min_bits: m }, Algorithm::Generic { min_bits: b }) => b >= *m,
            (a, b) => *a == b,
        });
    if !fits {
        return fail(
            AdminErrorKind::Refused,
            format!(
                "a {alg} key does not fit class {:?} ({})",
                class.name, class.purpose
            ),
        );
    }
    Ok(alg)
}

pub(crate) fn class_name(cko: u64) -> String {
    match cko {
        ck::CKO_PRIVATE_KEY => "CKO_PRIVATE_KEY".into(),
        ck::CKO_PUBLIC_KEY => "CKO_PUBLIC_KEY".into(),
        ck::CKO_SECRET_KEY => "CKO_SECRET_KEY".into(),
        ck::CKO_DATA => "CKO_DATA".into(),
        ck::CKO_CERTIFICATE => "CKO_CERTIFICATE".into(),
        other => format!("{other:#x}"),
    }
}

pub(crate) fn key_type_name(ckk: u64) -> String {
    match ckk {
        ck::CKK_RSA => "CKK_RSA".into(),
        ck::CKK_EC => "CKK_EC".into(),
        ck::CKK_EC_EDWARDS => "CKK_EC_EDWARDS".into(),
        ck::CKK_EC_MONTGOMERY => "CKK_EC_MONTGOMERY".into(),
        ck::CKK_AES => "CKK_AES".into(),
        ck::CKK_GENERIC_SECRET => "CKK_GENERIC_SECRET".into(),
        ck::CKK_SHA256_HMAC => "CKK_SHA256_HMAC".into(),
        ck::CKK_DES3 => "CKK_DES3".into(),
        other => format!("{other:#x}"),
    }
}

pub(crate) fn oaep() -> Mechanism {
    Mechanism {
        mechanism: ck::CKM_RSA_PKCS_OAEP,
        param: MechParam::RsaOaep {
            hash_alg: ck::CKM_SHA_1,
            mgf: ck::CKG_MGF1_SHA1,
            source: ck::CKZ_DATA_SPECIFIED,
            source_data: Vec::new(),
        },
    }
}

/// A session AES key that can encrypt (for its check value) and never
/// leaves the HSM, as a template for `C_UnwrapKey`: the length comes from
/// the wrapped value (PKCS#11 forbids `CKA_VALUE_LEN` when unwrapping, and
/// SoftHSM2 answers `CKR_ATTRIBUTE_READ_ONLY`).
pub(crate) fn unwrapped_aes_template() -> Vec<Attribute> {
    vec![
        Attribute::ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
        Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
        Attribute::bool(ck::CKA_TOKEN, false),
        Attribute::bool(ck::CKA_SENSITIVE, true),
        Attribute::bool(ck::CKA_EXTRACTABLE, false),
        Attribute::bool(ck::CKA_ENCRYPT, true),
    ]
}

/// A session AES-256 key that can encrypt (for its check value) and never
/// leaves the HSM, as a template for `C_DeriveKey`.
pub(crate) fn derived_aes_template() -> Vec<Attribute> {
    let mut t = unwrapped_aes_template();
    t.push(Attribute::ulong(ck::CKA_VALUE_LEN, 32));
    t
}

/// Key check value: a zero block encrypted under the key (AES-ECB).
pub(crate) fn kcv(s: &HsmSession<'_>, key: BackendObject) -> AResult<Vec<u8>> {
    s.run(
        Op::Encrypt,
        &Mechanism::plain(ck::CKM_AES_ECB),
        key,
        &[0u8; 16],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(t: &[Attribute], attr: u64) -> Option<&Attribute> {
        t.iter().find(|a| a.attr_type == attr)
    }

    /// PKCS#11 forbids `CKA_VALUE_LEN` in an unwrap template (SoftHSM2
    /// answers `CKR_ATTRIBUTE_READ_ONLY`); a derivation needs it.
    #[test]
    fn probe_templates_give_a_length_only_where_pkcs11_allows_it() {
        let unwrapped = unwrapped_aes_template();
        assert!(value(&unwrapped, ck::CKA_VALUE_LEN).is_none());
        let derived = derived_aes_template();
        assert_eq!(
            value(&derived, ck::CKA_VALUE_LEN).and_then(|a| a.as_ulong()),
            Some(32)
        );
        for t in [&unwrapped, &derived] {
            assert_eq!(
                value(t, ck::CKA_TOKEN).and_then(|a| a.as_bool()),
                Some(false)
            );
            assert_eq!(
                value(t, ck::CKA_SENSITIVE).and_then(|a| a.as_bool()),
                Some(true)
            );
            assert_eq!(
                value(t, ck::CKA_EXTRACTABLE).and_then(|a| a.as_bool()),
                Some(false)
            );
        }
    }
}
