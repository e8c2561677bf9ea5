//! The module's C edge from raw bytes: `CK_ATTRIBUTE` templates (any
//! types, lengths and values, NULL values with lengths, odd and short
//! lengths, nested templates, misaligned nested arrays) and `CK_MECHANISM`s
//! with parameters of any bytes and length (and each parameter structure
//! with its inner pointers and lengths) go through the module's own
//! conversions, and `C_GetAttributeValue`'s fill writes arbitrary answers
//! into caller templates with buffers of any size. The memory the harness
//! builds is always what the caller promises (a pointer is NULL or valid
//! for its length), so anything AddressSanitizer reports is the module's.
//! Invariants: no panic, no memory error; what is read back matches the
//! caller's bytes; a fill never reports more than the caller's room.
#![no_main]

use std::mem::size_of;
use std::ptr;

use keyward_pkcs11::fuzzing;
use keyward_protocol::attr::{kind_of, AttrKind};
use keyward_protocol::{AttrResult, AttrValue, MechParam, Value};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use pkcs11_sys::*;

const ATTR_LEN: usize = size_of::<CK_ATTRIBUTE>();

/// Attribute types worth meeting often: each kind, and the nested ones.
const TYPES: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_CLASS,
    CKA_TOKEN,
    CKA_PRIVATE,
    CKA_LABEL,
    CKA_ID,
    CKA_VALUE,
    CKA_VALUE_LEN,
    CKA_KEY_TYPE,
    CKA_SENSITIVE,
    CKA_EXTRACTABLE,
    CKA_SIGN,
    CKA_EC_PARAMS,
    CKA_MODULUS_BITS,
    CKA_ALLOWED_MECHANISMS,
    CKA_WRAP_TEMPLATE,
    CKA_UNWRAP_TEMPLATE,
    CKA_DERIVE_TEMPLATE,
];

/// Mechanisms of every parameter shape the module knows, and some without.
const MECHANISMS: &[CK_MECHANISM_TYPE] = &[
    CKM_RSA_PKCS,
    CKM_ECDSA,
    CKM_SHA256,
    CKM_RSA_PKCS_PSS,
    CKM_SHA256_RSA_PKCS_PSS,
    CKM_RSA_PKCS_OAEP,
    CKM_AES_GCM,
    CKM_AES_CTR,
    CKM_AES_CBC,
    CKM_AES_CBC_PAD,
    CKM_DES3_CBC,
    CKM_AES_KEY_WRAP,
    CKM_AES_KEY_WRAP_PAD,
    CKM_EDDSA,
    CKM_ECDH1_DERIVE,
    CKM_ECDH1_COFACTOR_DERIVE,
    CKM_DH_PKCS_DERIVE,
    CKM_AES_CBC_ENCRYPT_DATA,
    CKM_DES_CBC_ENCRYPT_DATA,
    CKM_DES3_CBC_ENCRYPT_DATA,
    CKM_SHA256_HMAC_GENERAL,
    CKM_AES_CMAC_GENERAL,
    CKM_EXTRACT_KEY_FROM_KEY,
    CKM_CONCATENATE_BASE_AND_KEY,
    CKM_CONCATENATE_BASE_AND_DATA,
    CKM_CONCATENATE_DATA_AND_BASE,
    CKM_XOR_BASE_AND_DATA,
    CKM_AES_ECB_ENCRYPT_DATA,
    CKM_DES_ECB_ENCRYPT_DATA,
    CKM_DES3_ECB_ENCRYPT_DATA,
];

/// Everything the caller's structures point to, alive for one input.
#[derive(Default)]
struct Arena {
    bytes: Vec<Box<[u8]>>,
    attrs: Vec<Box<[CK_ATTRIBUTE]>>,
    words: Vec<Box<[u64]>>,
}

impl Arena {
    fn bytes(&mut self, b: Vec<u8>) -> *mut u8 {
        let mut b = b.into_boxed_slice();
        let p = b.as_mut_ptr();
        self.bytes.push(b);
        p
    }
    fn attrs(&mut self, a: Vec<CK_ATTRIBUTE>) -> *mut CK_ATTRIBUTE {
        let mut a = a.into_boxed_slice();
        let p = a.as_mut_ptr();
        self.attrs.push(a);
        p
    }
    /// `n` bytes at an address `offset` (0..8) past an 8-byte boundary.
    fn misaligned(&mut self, n: usize, offset: usize) -> *mut u8 {
        let mut w = vec![0u64; (n + offset).div_ceil(8) + 1].into_boxed_slice();
        // SAFETY: `offset < 8` is inside the allocation of at least one word.
        let p = unsafe { w.as_mut_ptr().cast::<u8>().add(offset) };
        self.words.push(w);
        p
    }
}

fn attr_type(u: &mut Unstructured<'_>) -> Result<CK_ATTRIBUTE_TYPE> {
    if u.ratio(7, 8)? {
        Ok(*u.choose(TYPES)?)
    } else {
        u.arbitrary()
    }
}

/// A length the caller gives for a buffer of `n` bytes: mostly `n`, or
/// less (a caller may promise fewer bytes than it has).
fn declared(u: &mut Unstructured<'_>, n: usize) -> Result<CK_ULONG> {
    Ok(if u.ratio(3, 4)? {
        n as CK_ULONG
    } else {
        u.int_in_range(0..=n)? as CK_ULONG
    })
}

/// A NULL pointer with any length (a caller's mistake the module must
/// answer), or a buffer of input bytes with its length.
fn byte_value(u: &mut Unstructured<'_>, arena: &mut Arena) -> Result<(*mut u8, CK_ULONG)> {
    if u.ratio(1, 8)? {
        let len = if u.arbitrary()? { 0 } else { u.arbitrary()? };
        return Ok((ptr::null_mut(), len));
    }
    let n = u.int_in_range(0..=40)?;
    let b = u.bytes(n)?.to_vec();
    let len = declared(u, n)?;
    Ok((arena.bytes(b), len))
}

/// One attribute of an input template (nested: one level, as the module
/// reads them).
fn in_attribute(u: &mut Unstructured<'_>, arena: &mut Arena, depth: u8) -> Result<CK_ATTRIBUTE> {
    let type_ = attr_type(u)?;
    // A template-valued type points to an array of attributes, as the
    // caller promises (or is NULL); nested ones are read as bytes.
    if depth == 0 && kind_of(type_) == AttrKind::Template && u.ratio(7, 8)? {
        let k = u.int_in_range(0..=4)?;
        let mut nested = Vec::with_capacity(k);
        for _ in 0..k {
            nested.push(in_attribute(u, arena, 1)?);
        }
        // An odd length, or a misaligned array (answered, never read).
        let extra = if u.ratio(1, 8)? { u.int_in_range(1..=ATTR_LEN - 1)? } else { 0 };
        let len = k * ATTR_LEN + extra;
        let p = if u.ratio(1, 8)? {
            let off = u.int_in_range(1..=7)?;
            let p = arena.misaligned(len, off);
            for (i, n) in nested.iter().enumerate() {
                // SAFETY: inside the `len` bytes just made.
                unsafe { p.add(i * ATTR_LEN).cast::<CK_ATTRIBUTE>().write_unaligned(*n) };
            }
            p.cast()
        } else {
            // Room for the extra bytes too.
            if extra > 0 {
                nested.push(CK_ATTRIBUTE { type_: 0, pValue: ptr::null_mut(), ulValueLen: 0 });
            }
            arena.attrs(nested).cast()
        };
        return Ok(CK_ATTRIBUTE { type_, pValue: p, ulValueLen: len as CK_ULONG });
    }
    if depth == 0 && kind_of(type_) == AttrKind::Template {
        let len = if u.arbitrary()? { 0 } else { u.arbitrary()? };
        return Ok(CK_ATTRIBUTE { type_, pValue: ptr::null_mut(), ulValueLen: len });
    }
    let (p, len) = byte_value(u, arena)?;
    Ok(CK_ATTRIBUTE { type_, pValue: p.cast(), ulValueLen: len })
}

fn in_template(u: &mut Unstructured<'_>) -> Result<()> {
    let mut arena = Arena::default();
    let k = u.int_in_range(0..=6)?;
    let mut t = Vec::with_capacity(k);
    for _ in 0..k {
        t.push(in_attribute(u, &mut arena, 0)?);
    }
    let copy = t.clone();
    let (p, count) = if k == 0 && u.ratio(1, 4)? {
        (ptr::null_mut(), u.arbitrary::<u8>()? as CK_ULONG)
    } else {
        (arena.attrs(t), k as CK_ULONG)
    };
    // SAFETY: every pointer is NULL or valid for its length (above).
    let got = unsafe { fuzzing::read_template(p, count) };
    if let Ok(got) = got {
        assert_eq!(got.len(), count as usize);
        for (a, c) in got.iter().zip(&copy) {
            assert_eq!(a.attr_type, c.type_);
            if let AttrValue::Leaf(Value::Bytes(b)) = &a.value {
                let want: &[u8] = if c.ulValueLen == 0 {
                    &[]
                } else {
                    // SAFETY: a value read without error is valid for its length.
                    unsafe { std::slice::from_raw_parts(c.pValue.cast(), c.ulValueLen as usize) }
                };
                assert_eq!(b.as_slice(), want, "a value read differs from the caller's");
            }
        }
    }
    Ok(())
}

/// Whether the module reads pointers inside this mechanism's parameter.
fn has_pointers(m: CK_MECHANISM_TYPE) -> bool {
    matches!(
        m,
        CKM_RSA_PKCS_OAEP
            | CKM_AES_GCM
            | CKM_EDDSA
            | CKM_ECDH1_DERIVE
            | CKM_ECDH1_COFACTOR_DERIVE
            | CKM_AES_CBC_ENCRYPT_DATA
            | CKM_DES_CBC_ENCRYPT_DATA
            | CKM_DES3_CBC_ENCRYPT_DATA
            | CKM_CONCATENATE_BASE_AND_DATA
            | CKM_CONCATENATE_DATA_AND_BASE
            | CKM_XOR_BASE_AND_DATA
            | CKM_AES_ECB_ENCRYPT_DATA
            | CKM_DES_ECB_ENCRYPT_DATA
            | CKM_DES3_ECB_ENCRYPT_DATA
    )
}

/// The sizes of the parameter structures with pointers inside.
const POINTER_SIZES: &[usize] = &[16, 24, 32, 40, 48];

/// `CK_GCM_PARAMS` of PKCS#11 2.40 (no `ulIvBits`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Gcm240 {
    p_iv: CK_BYTE_PTR,
    ul_iv_len: CK_ULONG,
    p_aad: CK_BYTE_PTR,
    ul_aad_len: CK_ULONG,
    ul_tag_bits: CK_ULONG,
}

/// Plain bytes of `s`.
fn raw<T: Copy>(s: &T) -> Vec<u8> {
    // SAFETY: `T` is a plain C structure; its bytes are read once.
    unsafe { std::slice::from_raw_parts((s as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

/// The parameter structure of `m`, its inner pointers NULL or valid for
/// their lengths.
fn param_struct(u: &mut Unstructured<'_>, arena: &mut Arena, m: CK_MECHANISM_TYPE) -> Result<Vec<u8>> {
    let mut b = |u: &mut Unstructured<'_>| byte_value(u, arena);
    Ok(match m {
        CKM_RSA_PKCS_OAEP => {
            let (p, l) = b(u)?;
            raw(&CK_RSA_PKCS_OAEP_PARAMS {
                hashAlg: u.arbitrary()?,
                mgf: u.arbitrary()?,
                source: u.arbitrary()?,
                pSourceData: p.cast(),
                ulSourceDataLen: l,
            })
        }
        CKM_AES_GCM => {
            let ((iv, ivl), (aad, aadl)) = (b(u)?, b(u)?);
            if u.arbitrary()? {
                raw(&CK_GCM_PARAMS {
                    pIv: iv,
                    ulIvLen: ivl,
                    ulIvBits: u.arbitrary()?,
                    pAAD: aad,
                    ulAADLen: aadl,
                    ulTagBits: u.arbitrary()?,
                })
            } else {
                raw(&Gcm240 {
                    p_iv: iv,
                    ul_iv_len: ivl,
                    p_aad: aad,
                    ul_aad_len: aadl,
                    ul_tag_bits: u.arbitrary()?,
                })
            }
        }
        CKM_EDDSA => {
            let (p, l) = b(u)?;
            raw(&CK_EDDSA_PARAMS { phFlag: u.arbitrary()?, ulContextDataLen: l, pContextData: p })
        }
        CKM_ECDH1_DERIVE | CKM_ECDH1_COFACTOR_DERIVE => {
            let ((s, sl), (p, pl)) = (b(u)?, b(u)?);
            raw(&CK_ECDH1_DERIVE_PARAMS {
                kdf: u.arbitrary()?,
                ulSharedDataLen: sl,
                pSharedData: s,
                ulPublicDataLen: pl,
                pPublicData: p,
            })
        }
        CKM_AES_CBC_ENCRYPT_DATA => {
            let (p, l) = b(u)?;
            raw(&CK_AES_CBC_ENCRYPT_DATA_PARAMS { iv: u.arbitrary()?, pData: p, length: l })
        }
        CKM_DES_CBC_ENCRYPT_DATA | CKM_DES3_CBC_ENCRYPT_DATA => {
            let (p, l) = b(u)?;
            raw(&CK_DES_CBC_ENCRYPT_DATA_PARAMS { iv: u.arbitrary()?, pData: p, length: l })
        }
        _ => {
            let (p, l) = b(u)?;
            raw(&CK_KEY_DERIVATION_STRING_DATA { pData: p, ulLen: l })
        }
    })
}

fn mechanism(u: &mut Unstructured<'_>) -> Result<()> {
    let mut arena = Arena::default();
    let m: CK_MECHANISM_TYPE = if u.ratio(7, 8)? { *u.choose(MECHANISMS)? } else { u.arbitrary()? };
    let (param, len) = match u.int_in_range(0..=2u8)? {
        0 => (ptr::null_mut(), u.arbitrary::<u8>()? as CK_ULONG),
        1 => {
            let mut n = u.int_in_range(0..=64)?;
            if has_pointers(m) && POINTER_SIZES.contains(&n) {
                n += 1;
            }
            let b = u.bytes(n)?.to_vec();
            (arena.bytes(b), n as CK_ULONG)
        }
        _ if has_pointers(m) => {
            let s = param_struct(u, &mut arena, m)?;
            let n = s.len();
            (arena.bytes(s), n as CK_ULONG)
        }
        _ => {
            // A structure's worth of words for the shapes without pointers.
            let n = *u.choose(&[8usize, 16, 24])?;
            let b = u.bytes(n)?.to_vec();
            (arena.bytes(b), n as CK_ULONG)
        }
    };
    let mech = CK_MECHANISM { mechanism: m, pParameter: param.cast(), ulParameterLen: len };
    let p: *const CK_MECHANISM = if u.ratio(1, 16)? { ptr::null() } else { &mech };
    // SAFETY: the mechanism and everything inside it is valid for its length.
    if let Ok(got) = unsafe { fuzzing::read_mechanism(p) } {
        assert_eq!(got.mechanism, m);
        if let MechParam::Bytes(b) = &got.param {
            // SAFETY: a flat parameter read without error is valid for its length.
            let want = unsafe { std::slice::from_raw_parts(param.cast_const(), len as usize) };
            assert_eq!(b.as_slice(), want, "a parameter read differs from the caller's");
        }
    }
    Ok(())
}

fn leaf(u: &mut Unstructured<'_>) -> Result<Value> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 => Value::Bool(u.arbitrary()?),
        1 => Value::Ulong(u.arbitrary()?),
        2 => {
            let n = u.int_in_range(0..=48)?;
            Value::Bytes(u.bytes(n)?.to_vec())
        }
        _ => Value::Mechanisms(u.arbitrary_iter()?.take(6).collect::<Result<_>>()?),
    })
}

fn answer(u: &mut Unstructured<'_>) -> Result<AttrResult> {
    Ok(match u.int_in_range(0..=7u8)? {
        0 => AttrResult::Sensitive,
        1 => AttrResult::Invalid,
        2 => {
            let k = u.int_in_range(0..=4)?;
            let mut entries = Vec::with_capacity(k);
            for _ in 0..k {
                entries.push((attr_type(u)?, leaf(u)?));
            }
            AttrResult::Value(AttrValue::Template(entries))
        }
        _ => AttrResult::Value(AttrValue::Leaf(leaf(u)?)),
    })
}

/// A caller's buffer for one value: NULL (asking the length), a byte
/// buffer of any size, or an array of attributes with their own buffers.
fn out_slot(u: &mut Unstructured<'_>, arena: &mut Arena, sizes: &mut Vec<(usize, Option<Vec<usize>>)>) -> Result<CK_ATTRIBUTE> {
    let type_ = attr_type(u)?;
    // A template-valued type gets an array of attributes (or NULL), as
    // the caller promises; any other type any buffer.
    let template = kind_of(type_) == AttrKind::Template;
    let choice = if template { u.int_in_range(0..=1u8)? } else { u.int_in_range(0..=3u8)? };
    match choice {
        0 => {
            sizes.push((0, None));
            let len = if u.arbitrary()? { 0 } else { u.arbitrary()? };
            Ok(CK_ATTRIBUTE { type_, pValue: ptr::null_mut(), ulValueLen: len })
        }
        1 => {
            let k = u.int_in_range(0..=4)?;
            let mut nested = Vec::with_capacity(k + 1);
            let mut inner = Vec::with_capacity(k);
            for _ in 0..k {
                let n = u.int_in_range(0..=40)?;
                let p = if u.ratio(1, 4)? { ptr::null_mut() } else { arena.bytes(vec![0xa5; n]) };
                inner.push(if p.is_null() { 0 } else { n });
                nested.push(CK_ATTRIBUTE { type_: 0, pValue: p.cast(), ulValueLen: declared(u, n)? });
            }
            let extra = if u.ratio(1, 8)? { u.int_in_range(1..=ATTR_LEN - 1)? } else { 0 };
            if extra > 0 {
                nested.push(CK_ATTRIBUTE { type_: 0, pValue: ptr::null_mut(), ulValueLen: 0 });
            }
            let len = k * ATTR_LEN + extra;
            sizes.push((len, Some(inner)));
            Ok(CK_ATTRIBUTE { type_, pValue: arena.attrs(nested).cast(), ulValueLen: len as CK_ULONG })
        }
        _ => {
            let n = u.int_in_range(0..=48)?;
            let len = declared(u, n)?;
            sizes.push((len as usize, None));
            Ok(CK_ATTRIBUTE { type_, pValue: arena.bytes(vec![0x5a; n]).cast(), ulValueLen: len })
        }
    }
}

fn fill(u: &mut Unstructured<'_>) -> Result<()> {
    let mut arena = Arena::default();
    let k = u.int_in_range(0..=6)?;
    let (mut t, mut sizes) = (Vec::with_capacity(k), Vec::with_capacity(k));
    for _ in 0..k {
        t.push(out_slot(u, &mut arena, &mut sizes)?);
    }
    let mut results = Vec::with_capacity(k);
    for _ in 0..k {
        results.push(answer(u)?);
    }
    if u.ratio(1, 16)? {
        results.pop();
    }
    let p = arena.attrs(t);
    let types_seen = std::cell::Cell::new(0usize);
    // SAFETY: every slot is NULL or valid for its length, nested ones too.
    let rv = unsafe {
        fuzzing::get_attribute_value(p, k as CK_ULONG, |types| {
            types_seen.set(types.len());
            results.clone()
        })
    };
    assert_eq!(types_seen.get(), k);
    // SAFETY: the array made above, still alive.
    let slots = unsafe { std::slice::from_raw_parts(p, k) };
    for ((slot, (room, inner)), result) in slots.iter().zip(&sizes).zip(&results) {
        if slot.pValue.is_null() || slot.ulValueLen == CK_UNAVAILABLE_INFORMATION {
            continue;
        }
        assert!(
            slot.ulValueLen as usize <= *room,
            "a value longer than the caller's buffer was reported"
        );
        // A refused answer (CKR_DEVICE_ERROR) wrote nothing to check.
        let written = rv != Err(CKR_DEVICE_ERROR);
        if let (true, AttrResult::Value(AttrValue::Template(entries)), Some(inner)) =
            (written, result, inner)
        {
            // SAFETY: a nested array the harness made, written in place.
            let nested = unsafe { std::slice::from_raw_parts(slot.pValue.cast::<CK_ATTRIBUTE>(), entries.len()) };
            for (n, (buf, (t, _))) in nested.iter().zip(inner.iter().zip(entries)) {
                assert_eq!(n.type_, *t);
                if !n.pValue.is_null() && n.ulValueLen != CK_UNAVAILABLE_INFORMATION {
                    assert!(n.ulValueLen as usize <= *buf, "a nested value longer than its buffer");
                }
            }
        }
    }
    if rv.is_ok() {
        assert_eq!(results.len(), k);
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = in_template(&mut u);
    let _ = mechanism(&mut u);
    let _ = fill(&mut u);
});
