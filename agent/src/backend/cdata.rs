//! The C structures the backend calls take, built from protocol types.
//!
//! Building these structures is safe: it only stores pointers into buffers
//! that the builder owns (heap buffers, which do not move when the builder
//! moves). Reading through those pointers is the backend library's job,
//! called from [`super::ffi`] while the builder is alive.
//!
//! Values are stored in `u64` words so that a `CK_ULONG` value is aligned
//! the way a C library reading `*(CK_ULONG *)pValue` expects.

use std::ffi::c_void;
use std::mem::size_of;
use std::ptr;

use cryptoki_sys as ck;
use keyward_protocol::attr::{kind_of, AttrKind};
use keyward_protocol::{AttrValue, Attribute, MechParam, Mechanism, Value};

use crate::error::{Error, Result};

/// Bytes copied into word-aligned storage; at least one word, so that an
/// empty value still has a valid, non-NULL pointer.
#[derive(Debug)]
pub struct Words {
    words: Vec<u64>,
    len: usize,
}

impl Words {
    /// A copy of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Words {
        let mut words = vec![0u64; bytes.len().div_ceil(8).max(1)];
        for (w, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            *w = u64::from_ne_bytes(b);
        }
        Words {
            words,
            len: bytes.len(),
        }
    }

    /// A zeroed buffer of `len` bytes.
    pub fn zeroed(len: usize) -> Words {
        Words {
            words: vec![0u64; len.div_ceil(8).max(1)],
            len,
        }
    }

    /// The pointer to hand to C.
    pub fn as_mut_ptr(&mut self) -> *mut c_void {
        self.words.as_mut_ptr().cast()
    }

    /// The first `len` bytes, copied out (`len` is capped at the size).
    pub fn to_bytes(&self, len: usize) -> Vec<u8> {
        let len = len.min(self.len);
        self.words
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .take(len)
            .collect()
    }
}

/// The C bytes of a leaf value.
fn leaf_bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::Bool(b) => vec![ck::CK_BBOOL::from(*b)],
        Value::Ulong(u) => (*u as ck::CK_ULONG).to_ne_bytes().to_vec(),
        Value::Bytes(b) => b.clone(),
        Value::Mechanisms(ms) => ms
            .iter()
            .flat_map(|m| (*m as ck::CK_MECHANISM_TYPE).to_ne_bytes())
            .collect(),
    }
}

/// A `CK_ATTRIBUTE` array with its values, alive as long as this is.
#[derive(Debug)]
pub struct CTemplate {
    attrs: Vec<ck::CK_ATTRIBUTE>,
    _values: Vec<Words>,
    _nested: Vec<Vec<ck::CK_ATTRIBUTE>>,
}

impl CTemplate {
    /// Builds the C array for `template`.
    pub fn new(template: &[Attribute]) -> CTemplate {
        let mut values = Vec::new();
        let mut nested = Vec::new();
        // Never empty of storage: an empty template is still passed as a
        // valid pointer (see `as_mut_ptr`).
        let mut attrs = Vec::with_capacity(template.len().max(1));
        for a in template {
            let attr = match &a.value {
                AttrValue::Leaf(v) => leaf_attr(a.attr_type, v, &mut values),
                AttrValue::Template(inner) => {
                    let mut arr: Vec<ck::CK_ATTRIBUTE> = inner
                        .iter()
                        .map(|(t, v)| leaf_attr(*t, v, &mut values))
                        .collect();
                    let attr = ck::CK_ATTRIBUTE {
                        type_: a.attr_type as ck::CK_ATTRIBUTE_TYPE,
                        pValue: arr.as_mut_ptr().cast(),
                        ulValueLen: (arr.len() * size_of::<ck::CK_ATTRIBUTE>()) as ck::CK_ULONG,
                    };
                    nested.push(arr);
                    attr
                }
            };
            attrs.push(attr);
        }
        CTemplate {
            attrs,
            _values: values,
            _nested: nested,
        }
    }

    /// `pTemplate`: a valid pointer even for an empty template (count 0),
    /// since backends refuse a NULL template in some calls
    /// (`C_CopyObject` with no attributes to change: `CKR_ARGUMENTS_BAD`
    /// from SoftHSM2), and the wire does not tell an application's NULL
    /// from an empty array.
    pub fn as_mut_ptr(&mut self) -> *mut ck::CK_ATTRIBUTE {
        self.attrs.as_mut_ptr()
    }

    /// `ulCount`.
    pub fn count(&self) -> ck::CK_ULONG {
        self.attrs.len() as ck::CK_ULONG
    }

    /// The attributes, for inspection.
    pub fn attrs(&self) -> &[ck::CK_ATTRIBUTE] {
        &self.attrs
    }
}

fn leaf_attr(attr_type: u64, v: &Value, values: &mut Vec<Words>) -> ck::CK_ATTRIBUTE {
    let mut w = Words::from_bytes(&leaf_bytes(v));
    let attr = ck::CK_ATTRIBUTE {
        type_: attr_type as ck::CK_ATTRIBUTE_TYPE,
        pValue: w.as_mut_ptr(),
        ulValueLen: w.len as ck::CK_ULONG,
    };
    values.push(w);
    attr
}

/// A leaf value read back from the backend, typed by its attribute.
/// A value whose length does not fit the type's shape stays bytes.
pub fn value_from_bytes(attr_type: u64, bytes: Vec<u8>) -> Value {
    const UL: usize = size_of::<ck::CK_ULONG>();
    match kind_of(attr_type) {
        AttrKind::Bool if bytes.len() == 1 => Value::Bool(bytes[0] != 0),
        AttrKind::Ulong if bytes.len() == UL => {
            let mut b = [0u8; UL];
            b.copy_from_slice(&bytes);
            Value::Ulong(ck::CK_ULONG::from_ne_bytes(b))
        }
        AttrKind::Mechanisms if bytes.len().is_multiple_of(UL) => Value::Mechanisms(
            bytes
                .chunks_exact(UL)
                .map(|c| {
                    let mut b = [0u8; UL];
                    b.copy_from_slice(c);
                    ck::CK_ULONG::from_ne_bytes(b)
                })
                .collect(),
        ),
        _ => Value::Bytes(bytes),
    }
}

/// The parameter structure behind `pParameter`, with the buffers its
/// pointers lead to.
#[derive(Debug)]
enum Param {
    None,
    Raw(Words),
    Ulong(Box<ck::CK_ULONG>),
    Pss(Box<ck::CK_RSA_PKCS_PSS_PARAMS>),
    Oaep(Box<ck::CK_RSA_PKCS_OAEP_PARAMS>),
    Gcm(Box<ck::CK_GCM_PARAMS>),
    Ctr(Box<ck::CK_AES_CTR_PARAMS>),
    Ecdh1(Box<ck::CK_ECDH1_DERIVE_PARAMS>),
    Eddsa(Box<ck::CK_EDDSA_PARAMS>),
    DerivationString(Box<ck::CK_KEY_DERIVATION_STRING_DATA>),
    AesCbcData(Box<ck::CK_AES_CBC_ENCRYPT_DATA_PARAMS>),
    DesCbcData(Box<ck::CK_DES_CBC_ENCRYPT_DATA_PARAMS>),
}

/// `pointer, length` of a byte buffer, NULL when empty.
fn buf(v: &mut [u8]) -> (*mut u8, ck::CK_ULONG) {
    if v.is_empty() {
        (ptr::null_mut(), 0)
    } else {
        (v.as_mut_ptr(), v.len() as ck::CK_ULONG)
    }
}

fn boxed<T>(b: &mut T) -> (*mut c_void, ck::CK_ULONG) {
    (
        ptr::from_mut(b).cast::<c_void>(),
        size_of::<T>() as ck::CK_ULONG,
    )
}

/// A `CK_MECHANISM` with its parameter rebuilt as the C structure the
/// mechanism expects.
#[derive(Debug)]
pub struct CMechanism {
    mechanism: ck::CK_MECHANISM_TYPE,
    param: Param,
    /// The byte buffers the parameter structure points into.
    _buffers: Vec<Vec<u8>>,
}

impl CMechanism {
    /// Rebuilds the C parameter of `m`. An IV of another length than 8 or
    /// 16 for `CbcEncryptData` is `CKR_MECHANISM_PARAM_INVALID`.
    pub fn new(m: &Mechanism) -> Result<CMechanism> {
        let mut buffers = Vec::new();
        let param = match &m.param {
            MechParam::None => Param::None,
            MechParam::Bytes(b) if b.is_empty() => Param::None,
            MechParam::Bytes(b) => Param::Raw(Words::from_bytes(b)),
            MechParam::Ulong(u) => Param::Ulong(Box::new(*u as ck::CK_ULONG)),
            MechParam::RsaPss {
                hash_alg,
                mgf,
                salt_len,
            } => Param::Pss(Box::new(ck::CK_RSA_PKCS_PSS_PARAMS {
                hashAlg: *hash_alg as ck::CK_MECHANISM_TYPE,
                mgf: *mgf as ck::CK_RSA_PKCS_MGF_TYPE,
                sLen: *salt_len as ck::CK_ULONG,
            })),
            MechParam::RsaOaep {
                hash_alg,
                mgf,
                source,
                source_data,
            } => {
                let mut data = source_data.clone();
                let (p, n) = buf(&mut data);
                buffers.push(data);
                Param::Oaep(Box::new(ck::CK_RSA_PKCS_OAEP_PARAMS {
                    hashAlg: *hash_alg as ck::CK_MECHANISM_TYPE,
                    mgf: *mgf as ck::CK_RSA_PKCS_MGF_TYPE,
                    source: *source as ck::CK_RSA_PKCS_OAEP_SOURCE_TYPE,
                    pSourceData: p.cast(),
                    ulSourceDataLen: n,
                }))
            }
            MechParam::Gcm {
                iv,
                iv_bits,
                aad,
                tag_bits,
            } => {
                let (mut iv, mut aad) = (iv.clone(), aad.clone());
                let (piv, niv) = buf(&mut iv);
                let (paad, naad) = buf(&mut aad);
                // The PKCS#11 3.0 layout (with ulIvBits), which is what
                // current libraries, SoftHSM2 included, read.
                buffers.extend([iv, aad]);
                Param::Gcm(Box::new(ck::CK_GCM_PARAMS {
                    pIv: piv,
                    ulIvLen: niv,
                    ulIvBits: *iv_bits as ck::CK_ULONG,
                    pAAD: paad,
                    ulAADLen: naad,
                    ulTagBits: *tag_bits as ck::CK_ULONG,
                }))
            }
            MechParam::Ctr { counter_bits, cb } => Param::Ctr(Box::new(ck::CK_AES_CTR_PARAMS {
                ulCounterBits: *counter_bits as ck::CK_ULONG,
                cb: *cb,
            })),
            MechParam::Ecdh1Derive {
                kdf,
                shared_data,
                public_data,
            } => {
                let (mut shared, mut public) = (shared_data.clone(), public_data.clone());
                let (ps, ns) = buf(&mut shared);
                let (pp, np) = buf(&mut public);
                buffers.extend([shared, public]);
                Param::Ecdh1(Box::new(ck::CK_ECDH1_DERIVE_PARAMS {
                    kdf: *kdf as ck::CK_EC_KDF_TYPE,
                    ulSharedDataLen: ns,
                    pSharedData: ps,
                    ulPublicDataLen: np,
                    pPublicData: pp,
                }))
            }
            MechParam::Eddsa { ph_flag, context } => {
                let mut context = context.clone();
                let (p, n) = buf(&mut context);
                buffers.push(context);
                Param::Eddsa(Box::new(ck::CK_EDDSA_PARAMS {
                    phFlag: ck::CK_BBOOL::from(*ph_flag),
                    ulContextDataLen: n,
                    pContextData: p,
                }))
            }
            MechParam::DerivationString(data) => {
                let mut data = data.clone();
                let (p, n) = buf(&mut data);
                buffers.push(data);
                Param::DerivationString(Box::new(ck::CK_KEY_DERIVATION_STRING_DATA {
                    pData: p,
                    ulLen: n,
                }))
            }
            MechParam::CbcEncryptData { iv, data } => cbc_encrypt_data(iv, data, &mut buffers)?,
        };
        Ok(CMechanism {
            mechanism: m.mechanism as ck::CK_MECHANISM_TYPE,
            param,
            _buffers: buffers,
        })
    }

    /// The `CK_MECHANISM` to pass; valid while `self` is alive and not
    /// mutated.
    pub fn raw(&mut self) -> ck::CK_MECHANISM {
        let (p, n) = match &mut self.param {
            Param::None => (ptr::null_mut(), 0),
            Param::Raw(w) => (w.as_mut_ptr(), w.len as ck::CK_ULONG),
            Param::Ulong(b) => boxed(&mut **b),
            Param::Pss(b) => boxed(&mut **b),
            Param::Oaep(b) => boxed(&mut **b),
            Param::Gcm(b) => boxed(&mut **b),
            Param::Ctr(b) => boxed(&mut **b),
            Param::Ecdh1(b) => boxed(&mut **b),
            Param::Eddsa(b) => boxed(&mut **b),
            Param::DerivationString(b) => boxed(&mut **b),
            Param::AesCbcData(b) => boxed(&mut **b),
            Param::DesCbcData(b) => boxed(&mut **b),
        };
        ck::CK_MECHANISM {
            mechanism: self.mechanism,
            pParameter: p,
            ulParameterLen: n,
        }
    }
}

/// `CK_AES_CBC_ENCRYPT_DATA_PARAMS` or `CK_DES_CBC_ENCRYPT_DATA_PARAMS`, by
/// the IV's length (16 or 8); `data` is kept alive in `buffers`.
fn cbc_encrypt_data(iv: &[u8], data: &[u8], buffers: &mut Vec<Vec<u8>>) -> Result<Param> {
    let mut data = data.to_vec();
    let (p, n) = buf(&mut data);
    match iv.len() {
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(iv);
            buffers.push(data);
            Ok(Param::AesCbcData(Box::new(
                ck::CK_AES_CBC_ENCRYPT_DATA_PARAMS {
                    iv: a,
                    pData: p,
                    length: n,
                },
            )))
        }
        8 => {
            let mut a = [0u8; 8];
            a.copy_from_slice(iv);
            buffers.push(data);
            Ok(Param::DesCbcData(Box::new(
                ck::CK_DES_CBC_ENCRYPT_DATA_PARAMS {
                    iv: a,
                    pData: p,
                    length: n,
                },
            )))
        }
        _ => Err(Error::Backend(ck::CKR_MECHANISM_PARAM_INVALID)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CKA_TOKEN: u64 = ck::CKA_TOKEN;
    const CKA_CLASS: u64 = ck::CKA_CLASS;
    const CKA_LABEL: u64 = ck::CKA_LABEL;

    #[test]
    fn leaf_values_take_their_c_shapes() {
        let t = CTemplate::new(&[
            Attribute::bool(CKA_TOKEN, true),
            Attribute::ulong(CKA_CLASS, 3),
            Attribute::bytes(CKA_LABEL, b"abc".to_vec()),
            Attribute::bytes(CKA_LABEL, Vec::new()),
            Attribute {
                attr_type: ck::CKA_ALLOWED_MECHANISMS,
                value: AttrValue::Leaf(Value::Mechanisms(vec![1, 2])),
            },
        ]);
        let a = t.attrs();
        assert_eq!(t.count(), 5);
        assert_eq!(a[0].type_, ck::CKA_TOKEN);
        assert_eq!(a[0].ulValueLen, 1);
        assert_eq!(a[1].ulValueLen, 8);
        assert_eq!(a[2].ulValueLen, 3);
        assert_eq!(a[3].ulValueLen, 0);
        assert!(!a[3].pValue.is_null());
        assert_eq!(a[4].ulValueLen, 16);
        for attr in a {
            assert_eq!(attr.pValue as usize % 8, 0, "values are word aligned");
        }
        assert_eq!(Words::from_bytes(b"abc").to_bytes(3), b"abc");
        assert_eq!(leaf_bytes(&Value::Bool(true)), vec![1]);
        assert_eq!(leaf_bytes(&Value::Ulong(3)), 3u64.to_ne_bytes().to_vec());
    }

    #[test]
    fn nested_templates_point_to_their_own_arrays() {
        let t = CTemplate::new(&[Attribute {
            attr_type: ck::CKA_WRAP_TEMPLATE,
            value: AttrValue::Template(vec![
                (CKA_TOKEN, Value::Bool(false)),
                (CKA_CLASS, Value::Ulong(4)),
            ]),
        }]);
        let a = &t.attrs()[0];
        assert_eq!(a.ulValueLen as usize, 2 * size_of::<ck::CK_ATTRIBUTE>());
        assert_eq!(
            a.pValue.cast::<ck::CK_ATTRIBUTE>(),
            t._nested[0].as_ptr().cast_mut()
        );
        assert_eq!(t._nested[0][1].type_, ck::CKA_CLASS);
        assert_eq!(t._nested[0][1].ulValueLen, 8);
        // An empty template is a valid pointer with count 0, never NULL.
        let mut empty = CTemplate::new(&[]);
        assert!(!empty.as_mut_ptr().is_null());
        assert_eq!(empty.count(), 0);
    }

    #[test]
    fn values_read_back_by_kind() {
        assert_eq!(value_from_bytes(CKA_TOKEN, vec![1]), Value::Bool(true));
        assert_eq!(
            value_from_bytes(CKA_CLASS, 4u64.to_ne_bytes().to_vec()),
            Value::Ulong(4)
        );
        // A wrong length stays bytes, unchanged.
        assert_eq!(
            value_from_bytes(CKA_CLASS, vec![1, 2]),
            Value::Bytes(vec![1, 2])
        );
        let mechs: Vec<u8> = [5u64, 6].iter().flat_map(|m| m.to_ne_bytes()).collect();
        assert_eq!(
            value_from_bytes(ck::CKA_ALLOWED_MECHANISMS, mechs),
            Value::Mechanisms(vec![5, 6])
        );
    }

    #[test]
    fn gcm_uses_the_3_0_layout() {
        let mut m = CMechanism::new(&Mechanism {
            mechanism: ck::CKM_AES_GCM,
            param: MechParam::Gcm {
                iv: vec![7; 12],
                iv_bits: 96,
                aad: Vec::new(),
                tag_bits: 128,
            },
        })
        .unwrap();
        let raw = m.raw();
        assert_eq!(raw.ulParameterLen as usize, size_of::<ck::CK_GCM_PARAMS>());
        let Param::Gcm(p) = &m.param else {
            panic!("not GCM")
        };
        assert_eq!(raw.pParameter, ptr::from_ref(&**p).cast_mut().cast());
        assert_eq!(p.ulIvLen, 12);
        assert_eq!(p.ulIvBits, 96);
        assert_eq!(p.pIv.cast_const(), m._buffers[0].as_ptr());
        assert!(p.pAAD.is_null());
        assert_eq!(p.ulAADLen, 0);
        assert_eq!(p.ulTagBits, 128);
    }

    #[test]
    fn other_parameters() {
        let mut m = CMechanism::new(&Mechanism::plain(ck::CKM_ECDSA)).unwrap();
        assert!(m.raw().pParameter.is_null());

        let mut m = CMechanism::new(&Mechanism {
            mechanism: ck::CKM_AES_CBC_PAD,
            param: MechParam::Bytes(vec![1; 16]),
        })
        .unwrap();
        assert_eq!(m.raw().ulParameterLen, 16);

        let mut m = CMechanism::new(&Mechanism {
            mechanism: ck::CKM_EDDSA,
            param: MechParam::Eddsa {
                ph_flag: true,
                context: b"ctx".to_vec(),
            },
        })
        .unwrap();
        assert_eq!(
            m.raw().ulParameterLen as usize,
            size_of::<ck::CK_EDDSA_PARAMS>()
        );
        let Param::Eddsa(p) = &m.param else {
            panic!("not EdDSA")
        };
        assert_eq!((p.phFlag, p.ulContextDataLen), (1, 3));

        let mut m = CMechanism::new(&Mechanism {
            mechanism: ck::CKM_RSA_PKCS_OAEP,
            param: MechParam::RsaOaep {
                hash_alg: ck::CKM_SHA256,
                mgf: ck::CKG_MGF1_SHA256,
                source: ck::CKZ_DATA_SPECIFIED,
                source_data: b"label".to_vec(),
            },
        })
        .unwrap();
        assert_eq!(
            m.raw().ulParameterLen as usize,
            size_of::<ck::CK_RSA_PKCS_OAEP_PARAMS>()
        );
        let Param::Oaep(p) = &m.param else {
            panic!("not OAEP")
        };
        assert_eq!(p.ulSourceDataLen, 5);

        let cbc = |iv: usize| {
            CMechanism::new(&Mechanism {
                mechanism: ck::CKM_AES_CBC_ENCRYPT_DATA,
                param: MechParam::CbcEncryptData {
                    iv: vec![0; iv],
                    data: vec![1; 32],
                },
            })
        };
        let mut aes = cbc(16).unwrap();
        assert_eq!(
            aes.raw().ulParameterLen as usize,
            size_of::<ck::CK_AES_CBC_ENCRYPT_DATA_PARAMS>()
        );
        let mut des = cbc(8).unwrap();
        assert_eq!(
            des.raw().ulParameterLen as usize,
            size_of::<ck::CK_DES_CBC_ENCRYPT_DATA_PARAMS>()
        );
        assert_eq!(
            cbc(12).unwrap_err(),
            Error::Backend(ck::CKR_MECHANISM_PARAM_INVALID)
        );

        let mut m = CMechanism::new(&Mechanism {
            mechanism: ck::CKM_ECDH1_DERIVE,
            param: MechParam::Ecdh1Derive {
                kdf: ck::CKD_NULL,
                shared_data: Vec::new(),
                public_data: vec![4; 65],
            },
        })
        .unwrap();
        assert_eq!(
            m.raw().ulParameterLen as usize,
            size_of::<ck::CK_ECDH1_DERIVE_PARAMS>()
        );
        let Param::Ecdh1(p) = &m.param else {
            panic!("not ECDH")
        };
        assert!(p.pSharedData.is_null());
        assert_eq!(p.ulPublicDataLen, 65);

        let mut m = CMechanism::new(&Mechanism {
            mechanism: ck::CKM_SHA256_HMAC_GENERAL,
            param: MechParam::Ulong(16),
        })
        .unwrap();
        assert_eq!(m.raw().ulParameterLen, 8);
    }
}
