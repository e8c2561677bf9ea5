//! Every raw-pointer read and write of the C ABI lives in this file.
//!
//! One wrapper per C shape. A wrapper is built from the raw arguments of an
//! entry point by an `unsafe fn new` whose contract is the PKCS#11 caller's
//! own (the pointer is NULL or valid for the length the caller gave, for the
//! duration of the call); from then on it is used through safe methods that
//! check NULLs and lengths and turn the C data into protocol types:
//!
//! - [`InBytes`]: an input byte string (`pData`/`ulDataLen`, PINs, seeds);
//! - [`InTemplate`]: a `CK_ATTRIBUTE` array read into [`Attribute`]s;
//! - [`OutTemplate`]: `C_GetAttributeValue`'s in/out template;
//! - [`OutBuf`]: an output buffer with the two-call size convention;
//! - [`OutList`], [`OutArray`], [`OutBytes`], [`Out`]: other outputs;
//! - [`InMechanism`]: a `CK_MECHANISM` decoded into a typed [`Mechanism`];
//! - [`InitArgs`], [`Reserved`], [`InCStr`], [`InOpt`]: the rest.
//!
//! Memory the caller hands over is read through byte slices and
//! `read_unaligned`, so a misaligned `pParameter` or `pValue` cannot cause
//! undefined behaviour.

use std::ffi::{c_void, CStr};
use std::mem::size_of;
use std::ptr;

use keyward_protocol::attr::{kind_of, AttrKind};
use keyward_protocol::{
    AttrResult, AttrValue, Attribute, MechParam, Mechanism, Secret, Value, MAX_FRAME_LEN,
};
use pkcs11_sys::*;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::state::HOLD_LIMIT;

const ULONG_LEN: usize = size_of::<CK_ULONG>();
const ATTRIBUTE_LEN: usize = size_of::<CK_ATTRIBUTE>();

/// The longest caller buffer one call takes: a frame's payload less room
/// for the request around it and for the input an operation holds back
/// ([`HOLD_LIMIT`]), so that a request built from one such buffer always
/// fits a frame. A longer one is refused here, before anything is sent or
/// any operation changes.
pub(crate) const MAX_INPUT_LEN: usize = MAX_FRAME_LEN - (1 << 20);
const _: () = assert!(HOLD_LIMIT < (1 << 20) / 2);

/// A caller's length as `usize`, refusing lengths no single call can carry
/// (they could only come from an uninitialised variable).
fn checked_len(len: CK_ULONG) -> Result<usize> {
    usize::try_from(len)
        .ok()
        .filter(|&n| n <= MAX_INPUT_LEN)
        .ok_or(Error::ArgumentsBad)
}

/// `len` bytes at `ptr`; NULL is accepted only for an empty string.
///
/// # Safety
/// `ptr` is NULL or valid for reads of `len` bytes for `'a`.
unsafe fn slice<'a>(ptr: *const u8, len: CK_ULONG) -> Result<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Error::ArgumentsBad);
    }
    let len = checked_len(len)?;
    // SAFETY: non-NULL, and the caller guarantees `len` readable bytes; u8
    // has no alignment requirement and every bit pattern is valid.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// `count` attributes at `ptr`; NULL is accepted only for an empty array.
///
/// # Safety
/// `ptr` is NULL or valid for reads and writes of `count` `CK_ATTRIBUTE`s
/// for `'a`, and nothing else accesses them meanwhile.
unsafe fn attributes<'a>(
    ptr: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
) -> Result<&'a mut [CK_ATTRIBUTE]> {
    if count == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() || !ptr.is_aligned() {
        return Err(Error::ArgumentsBad);
    }
    let count = checked_len(count)?;
    if count > MAX_FRAME_LEN / ATTRIBUTE_LEN {
        return Err(Error::ArgumentsBad);
    }
    // SAFETY: non-NULL, aligned, and the caller guarantees `count` valid
    // elements that only this call touches. CK_ATTRIBUTE is plain data.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, count) })
}

/// Blank-padded fixed-width string field (`CK_UTF8CHAR[N]`), cut at a
/// character boundary if too long.
pub(crate) fn pad<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [b' '; N];
    let mut end = s.len().min(N);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out[..end].copy_from_slice(&s.as_bytes()[..end]);
    out
}

// ---------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------

/// An input byte string.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InBytes {
    ptr: *const u8,
    len: CK_ULONG,
}

impl InBytes {
    /// # Safety
    /// `ptr` is NULL or valid for reads of `len` bytes during the call.
    pub(crate) unsafe fn new(ptr: *const u8, len: CK_ULONG) -> Self {
        InBytes { ptr, len }
    }

    /// The bytes (NULL with length 0 is empty; NULL otherwise is an error).
    pub(crate) fn as_slice(&self) -> Result<&[u8]> {
        // SAFETY: the contract of `new`; the slice lives no longer than self,
        // which lives no longer than the call.
        unsafe { slice(self.ptr, self.len) }
    }

    /// The bytes, copied.
    pub(crate) fn to_vec(self) -> Result<Vec<u8>> {
        self.as_slice().map(<[u8]>::to_vec)
    }

    /// The bytes as a secret (a PIN).
    pub(crate) fn secret(&self) -> Result<Secret> {
        Ok(Zeroizing::new(self.to_vec()?))
    }

    /// A PIN that may be absent: NULL with length 0 is `None`.
    pub(crate) fn optional_secret(&self) -> Result<Option<Secret>> {
        if self.ptr.is_null() && self.len == 0 {
            return Ok(None);
        }
        self.secret().map(Some)
    }
}

/// A leaf value as the wire carries it. Each type has one encoding: a
/// length that does not fit the kind (a 4-byte `CKA_TOKEN`, a 1-byte
/// `CKA_CLASS`) is `CKR_ATTRIBUTE_VALUE_INVALID`, answered here.
fn leaf_value(kind: AttrKind, raw: &[u8]) -> Result<Value> {
    Ok(match kind {
        AttrKind::Bool if raw.len() == 1 => Value::Bool(raw[0] != 0),
        AttrKind::Ulong if raw.len() == ULONG_LEN => Value::Ulong(read_ulong(raw)),
        AttrKind::Mechanisms if raw.len().is_multiple_of(ULONG_LEN) => {
            Value::Mechanisms(raw.chunks_exact(ULONG_LEN).map(read_ulong).collect())
        }
        AttrKind::Bytes => Value::Bytes(raw.to_vec()),
        AttrKind::Bool | AttrKind::Ulong | AttrKind::Mechanisms | AttrKind::Template => {
            return Err(Error::AttributeValueInvalid)
        }
    })
}

fn read_ulong(raw: &[u8]) -> u64 {
    let mut b = [0u8; ULONG_LEN];
    b.copy_from_slice(raw);
    CK_ULONG::from_ne_bytes(b)
}

/// Reads one attribute of an input template.
///
/// # Safety
/// `a.pValue` is NULL or valid for `a.ulValueLen` bytes; for a template
/// kind, it points to `ulValueLen / sizeof(CK_ATTRIBUTE)` attributes whose
/// values obey the same rule.
unsafe fn read_attribute(a: &CK_ATTRIBUTE) -> Result<Attribute> {
    let attr_type = a.type_;
    let kind = kind_of(attr_type);
    let value = if kind == AttrKind::Template {
        if !(a.ulValueLen as usize).is_multiple_of(ATTRIBUTE_LEN) {
            return Err(Error::AttributeValueInvalid);
        }
        let count = a.ulValueLen / ATTRIBUTE_LEN as CK_ULONG;
        // SAFETY: the function's contract covers the nested array.
        let nested = unsafe { attributes(a.pValue.cast(), count) }
            .map_err(|_| Error::AttributeValueInvalid)?;
        let mut leaves = Vec::with_capacity(nested.len());
        for n in nested.iter() {
            // SAFETY: nested values obey the same contract.
            let raw = unsafe { slice(n.pValue.cast(), n.ulValueLen) }?;
            leaves.push((n.type_, leaf_value(kind_of(n.type_), raw)?));
        }
        AttrValue::Template(leaves)
    } else {
        // SAFETY: the function's contract.
        let raw = unsafe { slice(a.pValue.cast(), a.ulValueLen) }?;
        AttrValue::Leaf(leaf_value(kind, raw)?)
    };
    Ok(Attribute { attr_type, value })
}

/// An input template (`pTemplate`/`ulCount`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct InTemplate {
    ptr: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
}

impl InTemplate {
    /// # Safety
    /// `ptr` is NULL or valid for `count` attributes during the call, each
    /// with a value valid for its length (nested templates likewise).
    pub(crate) unsafe fn new(ptr: *mut CK_ATTRIBUTE, count: CK_ULONG) -> Self {
        InTemplate { ptr, count }
    }

    /// The attributes with typed values. A template that gives one type
    /// twice with different values is `CKR_TEMPLATE_INCONSISTENT` (the
    /// agent refuses it at decoding: keyward and the backend could read
    /// different values).
    pub(crate) fn read(&self) -> Result<Vec<Attribute>> {
        // SAFETY: the contract of `new`. We only read through the slice.
        let attrs = unsafe { attributes(self.ptr, self.count) }?;
        let template = attrs
            .iter()
            // SAFETY: the contract of `new` covers every value.
            .map(|a| unsafe { read_attribute(a) })
            .collect::<Result<Vec<_>>>()?;
        match keyward_protocol::attr::check_template(&template) {
            Ok(()) => Ok(template),
            Err(keyward_protocol::ShapeError::Conflict(_)) => Err(Error::TemplateInconsistent),
            Err(keyward_protocol::ShapeError::Shape(_)) => Err(Error::AttributeValueInvalid),
        }
    }
}

/// `C_GetAttributeValue`'s template: types in, values (or lengths) out.
#[derive(Debug)]
pub(crate) struct OutTemplate {
    ptr: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
}

/// How one value fitted the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    Done,
    TooSmall,
}

impl OutTemplate {
    /// # Safety
    /// `ptr` is NULL or valid for reads and writes of `count` attributes
    /// during the call; each non-NULL `pValue` is writable for `ulValueLen`
    /// bytes (for template-valued types: an array of that many bytes of
    /// `CK_ATTRIBUTE`s obeying the same rule).
    pub(crate) unsafe fn new(ptr: *mut CK_ATTRIBUTE, count: CK_ULONG) -> Self {
        OutTemplate { ptr, count }
    }

    fn slots(&mut self) -> Result<&mut [CK_ATTRIBUTE]> {
        // SAFETY: the contract of `new`; the slice is used within one method
        // call at a time, never twice at once.
        unsafe { attributes(self.ptr, self.count) }
    }

    /// The requested attribute types.
    pub(crate) fn types(&mut self) -> Result<Vec<u64>> {
        Ok(self.slots()?.iter().map(|a| a.type_).collect())
    }

    /// Applies the agent's results: every attribute is processed, and the
    /// return value follows SENSITIVE > TYPE_INVALID > BUFFER_TOO_SMALL.
    /// An answer whose shape is not its type's (see [`fits_type`]) is
    /// `CKR_DEVICE_ERROR`, and nothing is written.
    pub(crate) fn write(&mut self, results: &[AttrResult]) -> Result<()> {
        let slots = self.slots()?;
        if results.len() != slots.len()
            || !slots
                .iter()
                .zip(results)
                .all(|(s, r)| fits_type(s.type_, r))
        {
            return Err(Error::UnexpectedAnswer);
        }
        let (mut sensitive, mut invalid, mut small) = (false, false, false);
        for (slot, result) in slots.iter_mut().zip(results) {
            match result {
                AttrResult::Sensitive => {
                    slot.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    sensitive = true;
                }
                AttrResult::Invalid => {
                    slot.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    invalid = true;
                }
                AttrResult::Value(value) => {
                    // SAFETY: the contract of `new` covers the value buffers.
                    if unsafe { write_value(slot, value) }? == Fit::TooSmall {
                        small = true;
                    }
                }
            }
        }
        match (sensitive, invalid, small) {
            (true, _, _) => Err(Error::AttributeSensitive),
            (_, true, _) => Err(Error::AttributeTypeInvalid),
            (_, _, true) => Err(Error::BufferTooSmall),
            _ => Ok(()),
        }
    }
}

/// Whether an answer has the shape of the type asked for: a template only
/// for a template-valued type (whose `pValue` the caller made an array of
/// `CK_ATTRIBUTE`s), a leaf only for another type. The buffer is taken for
/// what the type says it is, never for what the answer is: a template
/// answered for a byte-valued type would have the caller's bytes read as
/// pointers and written through, and a leaf answered for a template type
/// would overwrite the caller's attribute array with bytes.
fn fits_type(attr_type: CK_ATTRIBUTE_TYPE, result: &AttrResult) -> bool {
    let template = kind_of(attr_type) == AttrKind::Template;
    match result {
        AttrResult::Value(AttrValue::Template(_)) => template,
        AttrResult::Value(AttrValue::Leaf(_)) => !template,
        AttrResult::Sensitive | AttrResult::Invalid => true,
    }
}

/// The C bytes of a leaf value: a `CK_BBOOL` is one byte, a `CK_ULONG` and
/// each mechanism type native-endian `CK_ULONG`s.
fn leaf_bytes(value: &Value) -> Vec<u8> {
    match value {
        Value::Bool(b) => vec![u8::from(*b)],
        Value::Ulong(v) => (*v as CK_ULONG).to_ne_bytes().to_vec(),
        Value::Bytes(b) => b.clone(),
        Value::Mechanisms(m) => m
            .iter()
            .flat_map(|v| (*v as CK_ULONG).to_ne_bytes())
            .collect(),
    }
}

/// The bytes a caller's `ulValueLen` gives room for. No buffer is longer
/// than `isize::MAX`: a larger length, in particular
/// `CK_UNAVAILABLE_INFORMATION`, which [`OutTemplate::write`] itself puts
/// into a template whose value could not be returned, gives no room. A
/// template reused as it came back from such a call is answered
/// `CKR_BUFFER_TOO_SMALL` again instead of being written past its buffers.
fn room(len: CK_ULONG) -> usize {
    usize::try_from(len)
        .ok()
        .filter(|&n| isize::try_from(n).is_ok())
        .unwrap_or(0)
}

/// Writes `bytes` with the attribute convention: NULL `pValue` → length;
/// too short → `CK_UNAVAILABLE_INFORMATION`.
///
/// # Safety
/// A non-NULL `slot.pValue` is writable for `slot.ulValueLen` bytes.
unsafe fn write_leaf(slot: &mut CK_ATTRIBUTE, bytes: &[u8]) -> Fit {
    if slot.pValue.is_null() {
        slot.ulValueLen = bytes.len() as CK_ULONG;
        return Fit::Done;
    }
    if room(slot.ulValueLen) < bytes.len() {
        slot.ulValueLen = CK_UNAVAILABLE_INFORMATION;
        return Fit::TooSmall;
    }
    // SAFETY: the destination holds at least `bytes.len()` bytes (checked
    // above) and cannot overlap our own vector.
    unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), slot.pValue.cast::<u8>(), bytes.len()) };
    slot.ulValueLen = bytes.len() as CK_ULONG;
    Fit::Done
}

/// # Safety
/// As [`OutTemplate::new`] for this one slot.
unsafe fn write_value(slot: &mut CK_ATTRIBUTE, value: &AttrValue) -> Result<Fit> {
    match value {
        // SAFETY: the function's contract.
        AttrValue::Leaf(v) => Ok(unsafe { write_leaf(slot, &leaf_bytes(v)) }),
        AttrValue::Template(entries) => {
            let need = (entries.len() * ATTRIBUTE_LEN) as CK_ULONG;
            if slot.pValue.is_null() {
                slot.ulValueLen = need;
                return Ok(Fit::Done);
            }
            if room(slot.ulValueLen) < entries.len() * ATTRIBUTE_LEN {
                slot.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                return Ok(Fit::TooSmall);
            }
            // SAFETY: pValue holds at least `entries.len()` attributes
            // (checked above), per the function's contract.
            let nested = unsafe { attributes(slot.pValue.cast(), entries.len() as CK_ULONG) }?;
            let mut fit = Fit::Done;
            for (n, (attr_type, v)) in nested.iter_mut().zip(entries) {
                n.type_ = *attr_type as CK_ATTRIBUTE_TYPE;
                // SAFETY: nested values obey the same contract.
                if unsafe { write_leaf(n, &leaf_bytes(v)) } == Fit::TooSmall {
                    fit = Fit::TooSmall;
                }
            }
            slot.ulValueLen = need;
            Ok(fit)
        }
    }
}

// ---------------------------------------------------------------------------
// Outputs
// ---------------------------------------------------------------------------

/// What [`OutBuf::deliver`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// The output was copied; the operation may end.
    Written,
    /// The buffer was NULL: only the length was returned.
    LengthOnly,
}

/// An output buffer with its length (`pOut`/`pulOutLen`), written with the
/// two-call convention.
#[derive(Debug)]
pub(crate) struct OutBuf {
    ptr: *mut u8,
    len: *mut CK_ULONG,
}

impl OutBuf {
    /// # Safety
    /// `len` is NULL or valid for reads and writes; `ptr` is NULL or
    /// writable for `*len` bytes during the call.
    pub(crate) unsafe fn new(ptr: *mut u8, len: *mut CK_ULONG) -> Self {
        OutBuf { ptr, len }
    }

    /// Fails with `CKR_ARGUMENTS_BAD` when the length pointer is NULL.
    pub(crate) fn check(&self) -> Result<()> {
        if self.len.is_null() {
            Err(Error::ArgumentsBad)
        } else {
            Ok(())
        }
    }

    /// NULL buffer → the length and `Ok(LengthOnly)`; too short → the
    /// needed length and `CKR_BUFFER_TOO_SMALL`; else copy and `Ok(Written)`.
    pub(crate) fn deliver(&self, data: &[u8]) -> Result<Delivery> {
        self.check()?;
        let needed = data.len() as CK_ULONG;
        if self.ptr.is_null() {
            // SAFETY: non-NULL (checked) and writable per `new`.
            unsafe { self.len.write_unaligned(needed) };
            return Ok(Delivery::LengthOnly);
        }
        // SAFETY: non-NULL (checked) and readable per `new`.
        let capacity = unsafe { self.len.read_unaligned() };
        // SAFETY: as above, writable.
        unsafe { self.len.write_unaligned(needed) };
        if capacity < needed {
            return Err(Error::BufferTooSmall);
        }
        // SAFETY: `ptr` is writable for `capacity >= data.len()` bytes and
        // cannot overlap our own vector.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), self.ptr, data.len()) };
        Ok(Delivery::Written)
    }
}

/// A single output value (`CK_ULONG_PTR`, `CK_SESSION_HANDLE_PTR`,
/// `CK_INFO_PTR`, ...).
#[derive(Debug)]
pub(crate) struct Out<T>(*mut T);

impl<T> Out<T> {
    /// # Safety
    /// `ptr` is NULL or valid for writes of one `T` during the call.
    pub(crate) unsafe fn new(ptr: *mut T) -> Self {
        Out(ptr)
    }

    /// Fails with `CKR_ARGUMENTS_BAD` when the pointer is NULL.
    pub(crate) fn check(&self) -> Result<()> {
        if self.0.is_null() {
            Err(Error::ArgumentsBad)
        } else {
            Ok(())
        }
    }

    /// Writes the value.
    pub(crate) fn write(&self, value: T) -> Result<()> {
        self.check()?;
        // SAFETY: non-NULL (checked) and writable per `new`.
        unsafe { self.0.write_unaligned(value) };
        Ok(())
    }
}

/// An output array with its count (`pSlotList`/`pulCount`,
/// `pMechanismList`/`pulCount`, `pInterfacesList`/`pulCount`), written with
/// the two-call convention.
#[derive(Debug)]
pub(crate) struct OutList<T> {
    ptr: *mut T,
    count: *mut CK_ULONG,
}

impl<T: Copy> OutList<T> {
    /// # Safety
    /// `count` is NULL or valid for reads and writes; `ptr` is NULL or
    /// writable for `*count` elements during the call.
    pub(crate) unsafe fn new(ptr: *mut T, count: *mut CK_ULONG) -> Self {
        OutList { ptr, count }
    }

    /// Fails with `CKR_ARGUMENTS_BAD` when the count pointer is NULL.
    pub(crate) fn check(&self) -> Result<()> {
        if self.count.is_null() {
            Err(Error::ArgumentsBad)
        } else {
            Ok(())
        }
    }

    /// NULL array → the count; too short → the count and
    /// `CKR_BUFFER_TOO_SMALL`; else copy.
    pub(crate) fn deliver(&self, items: &[T]) -> Result<()> {
        self.check()?;
        let needed = items.len() as CK_ULONG;
        if self.ptr.is_null() {
            // SAFETY: non-NULL (checked) and writable per `new`.
            unsafe { self.count.write_unaligned(needed) };
            return Ok(());
        }
        // SAFETY: non-NULL (checked) and readable per `new`.
        let capacity = unsafe { self.count.read_unaligned() };
        // SAFETY: as above, writable.
        unsafe { self.count.write_unaligned(needed) };
        if capacity < needed {
            return Err(Error::BufferTooSmall);
        }
        for (i, item) in items.iter().enumerate() {
            // SAFETY: `ptr` holds `capacity >= items.len()` elements.
            unsafe { self.ptr.add(i).write_unaligned(*item) };
        }
        Ok(())
    }
}

/// An output array of fixed capacity (`C_FindObjects`' `phObject`).
#[derive(Debug)]
pub(crate) struct OutArray<T> {
    ptr: *mut T,
    max: CK_ULONG,
}

impl<T: Copy> OutArray<T> {
    /// # Safety
    /// `ptr` is NULL or writable for `max` elements during the call.
    pub(crate) unsafe fn new(ptr: *mut T, max: CK_ULONG) -> Self {
        OutArray { ptr, max }
    }

    /// Fails with `CKR_ARGUMENTS_BAD` for a NULL array of non-zero size.
    pub(crate) fn check(&self) -> Result<()> {
        if self.ptr.is_null() && self.max > 0 {
            Err(Error::ArgumentsBad)
        } else {
            Ok(())
        }
    }

    /// Writes as many items as fit; returns how many.
    pub(crate) fn fill_from(&self, items: &[T]) -> Result<usize> {
        self.check()?;
        let n = items
            .len()
            .min(usize::try_from(self.max).unwrap_or(usize::MAX));
        for (i, item) in items[..n].iter().enumerate() {
            // SAFETY: `ptr` is writable for `max >= n` elements.
            unsafe { self.ptr.add(i).write_unaligned(*item) };
        }
        Ok(n)
    }
}

/// A caller-sized output buffer (`C_GenerateRandom`).
#[derive(Debug)]
pub(crate) struct OutBytes {
    ptr: *mut u8,
    len: CK_ULONG,
}

impl OutBytes {
    /// # Safety
    /// `ptr` is NULL or writable for `len` bytes during the call.
    pub(crate) unsafe fn new(ptr: *mut u8, len: CK_ULONG) -> Self {
        OutBytes { ptr, len }
    }

    /// The requested length; NULL with a non-zero length is an error.
    pub(crate) fn len(&self) -> Result<usize> {
        if self.ptr.is_null() && self.len > 0 {
            return Err(Error::ArgumentsBad);
        }
        checked_len(self.len)
    }

    /// Fills the buffer; `data` must have exactly the requested length.
    pub(crate) fn fill(&self, data: &[u8]) -> Result<()> {
        if data.len() != self.len()? {
            return Err(Error::UnexpectedAnswer);
        }
        if !data.is_empty() {
            // SAFETY: writable for `len == data.len()` bytes per `new`.
            unsafe { ptr::copy_nonoverlapping(data.as_ptr(), self.ptr, data.len()) };
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Small inputs
// ---------------------------------------------------------------------------

/// `C_Initialize`'s `pInitArgs`.
#[derive(Debug)]
pub(crate) struct InitArgs(*const CK_C_INITIALIZE_ARGS);

impl InitArgs {
    /// # Safety
    /// `ptr` is NULL or points to a readable `CK_C_INITIALIZE_ARGS`.
    pub(crate) unsafe fn new(ptr: *const c_void) -> Self {
        InitArgs(ptr.cast())
    }

    /// Applies the specification's rules: reserved must be NULL; the mutex
    /// functions all or none; all four without `CKF_OS_LOCKING_OK` means the
    /// application insists on its own locks, which this module cannot use.
    pub(crate) fn check(&self) -> Result<()> {
        if self.0.is_null() {
            return Ok(());
        }
        // SAFETY: non-NULL and readable per `new`; plain data.
        let args = unsafe { self.0.read_unaligned() };
        if !args.pReserved.is_null() {
            return Err(Error::ArgumentsBad);
        }
        let given = [
            args.CreateMutex.is_some(),
            args.DestroyMutex.is_some(),
            args.LockMutex.is_some(),
            args.UnlockMutex.is_some(),
        ]
        .iter()
        .filter(|&&b| b)
        .count();
        match given {
            0 => Ok(()),
            4 if args.flags & CKF_OS_LOCKING_OK != 0 => Ok(()),
            4 => Err(Error::CantLock),
            _ => Err(Error::ArgumentsBad),
        }
    }
}

/// A `pReserved` argument that must be NULL.
#[derive(Debug)]
pub(crate) struct Reserved(*const c_void);

impl Reserved {
    /// Only the pointer's value is looked at; it is never dereferenced.
    pub(crate) fn new(ptr: *const c_void) -> Self {
        Reserved(ptr)
    }

    /// `CKR_ARGUMENTS_BAD` unless NULL.
    pub(crate) fn check(&self) -> Result<()> {
        if self.0.is_null() {
            Ok(())
        } else {
            Err(Error::ArgumentsBad)
        }
    }
}

/// An optional NUL-terminated string (`C_GetInterface`'s name).
#[derive(Debug)]
pub(crate) struct InCStr(*const u8);

impl InCStr {
    /// # Safety
    /// `ptr` is NULL or points to a NUL-terminated string.
    pub(crate) unsafe fn new(ptr: *const u8) -> Self {
        InCStr(ptr)
    }

    /// The string, or `None` for NULL.
    pub(crate) fn read(&self) -> Option<&CStr> {
        if self.0.is_null() {
            return None;
        }
        // SAFETY: non-NULL and NUL-terminated per `new`.
        Some(unsafe { CStr::from_ptr(self.0.cast()) })
    }
}

/// An optional input structure (`C_GetInterface`'s `pVersion`).
#[derive(Debug)]
pub(crate) struct InOpt<T>(*const T);

impl<T: Copy> InOpt<T> {
    /// # Safety
    /// `ptr` is NULL or points to a readable `T`.
    pub(crate) unsafe fn new(ptr: *const T) -> Self {
        InOpt(ptr)
    }

    /// The value, or `None` for NULL.
    pub(crate) fn read(&self) -> Option<T> {
        if self.0.is_null() {
            return None;
        }
        // SAFETY: non-NULL and readable per `new`; plain data.
        Some(unsafe { self.0.read_unaligned() })
    }
}

// ---------------------------------------------------------------------------
// Mechanisms
// ---------------------------------------------------------------------------

/// `CK_GCM_PARAMS` as PKCS#11 2.40 headers define it (no `ulIvBits`);
/// applications built against them pass this 40-byte layout.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct GcmParams240 {
    p_iv: CK_BYTE_PTR,
    ul_iv_len: CK_ULONG,
    p_aad: CK_BYTE_PTR,
    ul_aad_len: CK_ULONG,
    ul_tag_bits: CK_ULONG,
}

/// How the module reads a mechanism's parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// No parameter known: a non-empty one is refused.
    None,
    /// `CK_RSA_PKCS_PSS_PARAMS`.
    Pss,
    /// `CK_RSA_PKCS_OAEP_PARAMS`.
    Oaep,
    /// `CK_GCM_PARAMS`, either layout.
    Gcm,
    /// `CK_AES_CTR_PARAMS`.
    Ctr,
    /// An IV of exactly this length.
    Iv(usize),
    /// Optional flat bytes of any length (AES key-wrap IVs).
    OptionalBytes,
    /// Flat bytes of any length (the peer's public value of
    /// `CKM_DH_PKCS_DERIVE`).
    Bytes,
    /// Optional `CK_EDDSA_PARAMS`.
    Eddsa,
    /// `CK_ECDH1_DERIVE_PARAMS`.
    Ecdh1,
    /// `CK_AES_CBC_ENCRYPT_DATA_PARAMS` (16) or the DES one (8).
    CbcEncryptData(usize),
    /// One `CK_ULONG` (`CK_MAC_GENERAL_PARAMS`, `CK_EXTRACT_PARAMS`, a key
    /// handle).
    Ulong,
    /// `CK_KEY_DERIVATION_STRING_DATA`.
    DerivationString,
}

fn shape_of(mechanism: CK_MECHANISM_TYPE) -> Shape {
    match mechanism {
        CKM_RSA_PKCS_PSS
        | CKM_SHA1_RSA_PKCS_PSS
        | CKM_SHA224_RSA_PKCS_PSS
        | CKM_SHA256_RSA_PKCS_PSS
        | CKM_SHA384_RSA_PKCS_PSS
        | CKM_SHA512_RSA_PKCS_PSS
        | CKM_SHA3_224_RSA_PKCS_PSS
        | CKM_SHA3_256_RSA_PKCS_PSS
        | CKM_SHA3_384_RSA_PKCS_PSS
        | CKM_SHA3_512_RSA_PKCS_PSS => Shape::Pss,
        CKM_RSA_PKCS_OAEP => Shape::Oaep,
        CKM_AES_GCM => Shape::Gcm,
        CKM_AES_CTR => Shape::Ctr,
        CKM_AES_CBC | CKM_AES_CBC_PAD | CKM_AES_OFB | CKM_AES_CFB8 | CKM_AES_CFB64
        | CKM_AES_CFB128 | CKM_AES_CTS => Shape::Iv(16),
        CKM_DES_CBC | CKM_DES_CBC_PAD | CKM_DES3_CBC | CKM_DES3_CBC_PAD => Shape::Iv(8),
        CKM_AES_KEY_WRAP | CKM_AES_KEY_WRAP_PAD | CKM_AES_KEY_WRAP_KWP => Shape::OptionalBytes,
        CKM_EDDSA => Shape::Eddsa,
        CKM_ECDH1_DERIVE | CKM_ECDH1_COFACTOR_DERIVE => Shape::Ecdh1,
        CKM_DH_PKCS_DERIVE => Shape::Bytes,
        CKM_AES_CBC_ENCRYPT_DATA => Shape::CbcEncryptData(16),
        CKM_DES_CBC_ENCRYPT_DATA | CKM_DES3_CBC_ENCRYPT_DATA => Shape::CbcEncryptData(8),
        CKM_MD5_HMAC_GENERAL
        | CKM_SHA_1_HMAC_GENERAL
        | CKM_SHA224_HMAC_GENERAL
        | CKM_SHA256_HMAC_GENERAL
        | CKM_SHA384_HMAC_GENERAL
        | CKM_SHA512_HMAC_GENERAL
        | CKM_SHA512_224_HMAC_GENERAL
        | CKM_SHA512_256_HMAC_GENERAL
        | CKM_SHA3_224_HMAC_GENERAL
        | CKM_SHA3_256_HMAC_GENERAL
        | CKM_SHA3_384_HMAC_GENERAL
        | CKM_SHA3_512_HMAC_GENERAL
        | CKM_AES_MAC_GENERAL
        | CKM_AES_CMAC_GENERAL
        | CKM_DES3_MAC_GENERAL
        | CKM_DES3_CMAC_GENERAL
        | CKM_EXTRACT_KEY_FROM_KEY
        | CKM_CONCATENATE_BASE_AND_KEY => Shape::Ulong,
        CKM_CONCATENATE_BASE_AND_DATA
        | CKM_CONCATENATE_DATA_AND_BASE
        | CKM_XOR_BASE_AND_DATA
        | CKM_AES_ECB_ENCRYPT_DATA
        | CKM_DES_ECB_ENCRYPT_DATA
        | CKM_DES3_ECB_ENCRYPT_DATA => Shape::DerivationString,
        // Everything else (RSA PKCS#1 v1.5, ECDSA and ECDSA_SHA*, HMAC,
        // digests, AES ECB, CMAC, key and key-pair generation, ...) takes no
        // parameter.
        _ => Shape::None,
    }
}

/// A parameter structure of exactly `size_of::<T>()` bytes.
///
/// # Safety
/// `p` is non-NULL and readable for `len` bytes.
unsafe fn param_struct<T: Copy>(p: *const c_void, len: CK_ULONG) -> Result<T> {
    if len as usize != size_of::<T>() {
        return Err(Error::MechanismParamInvalid);
    }
    // SAFETY: `len == size_of::<T>()` readable bytes; `T` is a plain C
    // structure of integers and pointers, valid for any bit pattern.
    Ok(unsafe { p.cast::<T>().read_unaligned() })
}

/// Bytes a parameter structure points to; a NULL pointer with a length is
/// a bad parameter.
///
/// # Safety
/// `p` is NULL or readable for `len` bytes.
unsafe fn param_bytes(p: *const u8, len: CK_ULONG) -> Result<Vec<u8>> {
    // SAFETY: the function's contract.
    unsafe { slice(p, len) }
        .map(<[u8]>::to_vec)
        .map_err(|_| Error::MechanismParamInvalid)
}

/// Decodes `pParameter` for `mechanism`.
///
/// # Safety
/// `p` is NULL or readable for `len` bytes, and pointers inside the
/// structure are valid for their lengths.
unsafe fn decode_param(
    mechanism: CK_MECHANISM_TYPE,
    p: *const c_void,
    len: CK_ULONG,
) -> Result<MechParam> {
    if p.is_null() {
        return Ok(MechParam::None);
    }
    let shape = shape_of(mechanism);
    if len == 0 && matches!(shape, Shape::None | Shape::OptionalBytes | Shape::Eddsa) {
        return Ok(MechParam::None);
    }
    // SAFETY: `p` is non-NULL and readable for `len` bytes, and the inner
    // pointers are valid for their lengths, per the function's contract;
    // `param_struct` checks `len` against each layout before reading.
    let param = unsafe {
        match shape {
            Shape::None => return Err(Error::MechanismParamInvalid),
            Shape::Pss => {
                let s: CK_RSA_PKCS_PSS_PARAMS = param_struct(p, len)?;
                MechParam::RsaPss {
                    hash_alg: s.hashAlg as u64,
                    mgf: s.mgf as u64,
                    salt_len: s.sLen as u64,
                }
            }
            Shape::Oaep => {
                let s: CK_RSA_PKCS_OAEP_PARAMS = param_struct(p, len)?;
                MechParam::RsaOaep {
                    hash_alg: s.hashAlg as u64,
                    mgf: s.mgf as u64,
                    source: s.source as u64,
                    source_data: param_bytes(s.pSourceData.cast(), s.ulSourceDataLen)?,
                }
            }
            Shape::Gcm => {
                if len as usize == size_of::<CK_GCM_PARAMS>() {
                    let s: CK_GCM_PARAMS = param_struct(p, len)?;
                    MechParam::Gcm {
                        iv: param_bytes(s.pIv, s.ulIvLen)?,
                        iv_bits: s.ulIvBits as u64,
                        aad: param_bytes(s.pAAD, s.ulAADLen)?,
                        tag_bits: s.ulTagBits as u64,
                    }
                } else {
                    let s: GcmParams240 = param_struct(p, len)?;
                    MechParam::Gcm {
                        iv: param_bytes(s.p_iv, s.ul_iv_len)?,
                        iv_bits: (s.ul_iv_len as u64).saturating_mul(8),
                        aad: param_bytes(s.p_aad, s.ul_aad_len)?,
                        tag_bits: s.ul_tag_bits as u64,
                    }
                }
            }
            Shape::Ctr => {
                let s: CK_AES_CTR_PARAMS = param_struct(p, len)?;
                MechParam::Ctr {
                    counter_bits: s.ulCounterBits as u64,
                    cb: s.cb,
                }
            }
            Shape::Iv(n) => {
                if len as usize != n {
                    return Err(Error::MechanismParamInvalid);
                }
                MechParam::Bytes(param_bytes(p.cast(), len)?)
            }
            Shape::OptionalBytes | Shape::Bytes => MechParam::Bytes(param_bytes(p.cast(), len)?),
            Shape::Eddsa => {
                let s: CK_EDDSA_PARAMS = param_struct(p, len)?;
                MechParam::Eddsa {
                    ph_flag: s.phFlag != 0,
                    context: param_bytes(s.pContextData, s.ulContextDataLen)?,
                }
            }
            Shape::Ecdh1 => {
                let s: CK_ECDH1_DERIVE_PARAMS = param_struct(p, len)?;
                MechParam::Ecdh1Derive {
                    kdf: s.kdf as u64,
                    shared_data: param_bytes(s.pSharedData, s.ulSharedDataLen)?,
                    public_data: param_bytes(s.pPublicData, s.ulPublicDataLen)?,
                }
            }
            Shape::CbcEncryptData(16) => {
                let s: CK_AES_CBC_ENCRYPT_DATA_PARAMS = param_struct(p, len)?;
                MechParam::CbcEncryptData {
                    iv: s.iv.to_vec(),
                    data: param_bytes(s.pData, s.length)?,
                }
            }
            Shape::CbcEncryptData(_) => {
                let s: CK_DES_CBC_ENCRYPT_DATA_PARAMS = param_struct(p, len)?;
                MechParam::CbcEncryptData {
                    iv: s.iv.to_vec(),
                    data: param_bytes(s.pData, s.length)?,
                }
            }
            Shape::Ulong => {
                let v: CK_ULONG = param_struct(p, len)?;
                MechParam::Ulong(v as u64)
            }
            Shape::DerivationString => {
                let s: CK_KEY_DERIVATION_STRING_DATA = param_struct(p, len)?;
                MechParam::DerivationString(param_bytes(s.pData, s.ulLen)?)
            }
        }
    };
    Ok(param)
}

/// A `CK_MECHANISM_PTR` argument.
#[derive(Debug)]
pub(crate) struct InMechanism(*const CK_MECHANISM);

impl InMechanism {
    /// # Safety
    /// `ptr` is NULL or points to a readable `CK_MECHANISM` whose parameter
    /// (and the buffers inside it) are valid for their lengths.
    pub(crate) unsafe fn new(ptr: *const CK_MECHANISM) -> Self {
        InMechanism(ptr)
    }

    /// The mechanism with its typed parameter.
    pub(crate) fn read(&self) -> Result<Mechanism> {
        if self.0.is_null() {
            return Err(Error::ArgumentsBad);
        }
        // SAFETY: non-NULL and readable per `new`; plain data.
        let m = unsafe { self.0.read_unaligned() };
        // SAFETY: the parameter's validity is part of `new`'s contract.
        let param = unsafe { decode_param(m.mechanism, m.pParameter, m.ulParameterLen) }?;
        Ok(Mechanism {
            mechanism: m.mechanism,
            param,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr<T>(t: CK_ATTRIBUTE_TYPE, v: &mut T) -> CK_ATTRIBUTE {
        CK_ATTRIBUTE {
            type_: t,
            pValue: (v as *mut T).cast(),
            ulValueLen: size_of::<T>() as CK_ULONG,
        }
    }

    fn read_template(t: &mut [CK_ATTRIBUTE]) -> Result<Vec<Attribute>> {
        // SAFETY: a live array whose values point to live test variables.
        unsafe { InTemplate::new(t.as_mut_ptr(), t.len() as CK_ULONG) }.read()
    }

    #[test]
    fn template_values_are_typed_by_kind() {
        let mut token: CK_BBOOL = CK_TRUE;
        let mut class: CK_ULONG = CKO_SECRET_KEY;
        let mut label = *b"my key";
        let mut mechs: [CK_ULONG; 2] = [CKM_AES_CBC, CKM_AES_GCM];
        let mut t = [
            attr(CKA_TOKEN, &mut token),
            attr(CKA_CLASS, &mut class),
            attr(CKA_LABEL, &mut label),
            attr(CKA_ALLOWED_MECHANISMS, &mut mechs),
        ];
        let got = read_template(&mut t).unwrap();
        assert_eq!(got[0], Attribute::bool(CKA_TOKEN, true));
        assert_eq!(got[1], Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY));
        assert_eq!(got[2], Attribute::bytes(CKA_LABEL, b"my key".to_vec()));
        assert_eq!(
            got[3].value,
            AttrValue::Leaf(Value::Mechanisms(vec![CKM_AES_CBC, CKM_AES_GCM]))
        );
    }

    /// A value whose length does not fit its type is answered here with
    /// `CKR_ATTRIBUTE_VALUE_INVALID`, never sent as bytes.
    #[test]
    fn wrong_length_values_are_invalid() {
        let mut label = *b"k";
        let mut four: u32 = 1;
        let mut t = [attr(CKA_LABEL, &mut label), attr(CKA_TOKEN, &mut four)];
        assert_eq!(read_template(&mut t), Err(Error::AttributeValueInvalid));
        let mut one: u8 = CKO_SECRET_KEY as u8;
        let mut t = [attr(CKA_CLASS, &mut one)];
        assert_eq!(read_template(&mut t), Err(Error::AttributeValueInvalid));
        let mut short: u16 = 7;
        let mut t = [attr(CKA_VALUE_LEN, &mut short)];
        assert_eq!(read_template(&mut t), Err(Error::AttributeValueInvalid));
        let mut odd = [0u8; 12];
        let mut t = [attr(CKA_ALLOWED_MECHANISMS, &mut odd)];
        assert_eq!(read_template(&mut t), Err(Error::AttributeValueInvalid));
        // Inside a nested template too.
        let mut four: u32 = 0;
        let mut nested = [attr(CKA_EXTRACTABLE, &mut four)];
        let mut t = [CK_ATTRIBUTE {
            type_: CKA_UNWRAP_TEMPLATE,
            pValue: nested.as_mut_ptr().cast(),
            ulValueLen: ATTRIBUTE_LEN as CK_ULONG,
        }];
        assert_eq!(read_template(&mut t), Err(Error::AttributeValueInvalid));
    }

    #[test]
    fn a_type_given_twice_with_different_values_is_inconsistent() {
        let (mut no, mut yes): (CK_BBOOL, CK_BBOOL) = (CK_FALSE, CK_TRUE);
        let mut again: CK_BBOOL = CK_FALSE;
        let mut t = [attr(CKA_TOKEN, &mut no), attr(CKA_TOKEN, &mut again)];
        assert_eq!(read_template(&mut t).unwrap().len(), 2);
        let mut t = [attr(CKA_TOKEN, &mut no), attr(CKA_TOKEN, &mut yes)];
        assert_eq!(read_template(&mut t), Err(Error::TemplateInconsistent));
    }

    #[test]
    fn nested_templates_are_read() {
        let mut extractable: CK_BBOOL = 0;
        let mut key_type: CK_ULONG = CKK_AES;
        let mut nested = [
            attr(CKA_EXTRACTABLE, &mut extractable),
            attr(CKA_KEY_TYPE, &mut key_type),
        ];
        let mut t = [CK_ATTRIBUTE {
            type_: CKA_WRAP_TEMPLATE,
            pValue: nested.as_mut_ptr().cast(),
            ulValueLen: (2 * ATTRIBUTE_LEN) as CK_ULONG,
        }];
        let got = read_template(&mut t).unwrap();
        assert_eq!(
            got[0].value,
            AttrValue::Template(vec![
                (CKA_EXTRACTABLE, Value::Bool(false)),
                (CKA_KEY_TYPE, Value::Ulong(CKK_AES)),
            ])
        );
        // A length that is not a whole number of attributes is refused.
        t[0].ulValueLen -= 1;
        assert_eq!(read_template(&mut t), Err(Error::AttributeValueInvalid));
    }

    #[test]
    fn null_pointers_are_arguments_bad() {
        let mut t = [CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: ptr::null_mut(),
            ulValueLen: 4,
        }];
        assert_eq!(read_template(&mut t), Err(Error::ArgumentsBad));
        // SAFETY: NULL with a count: the wrapper must refuse it.
        let none = unsafe { InTemplate::new(ptr::null_mut(), 3) };
        assert_eq!(none.read(), Err(Error::ArgumentsBad));
        // SAFETY: NULL and empty is an empty template.
        let empty = unsafe { InTemplate::new(ptr::null_mut(), 0) };
        assert_eq!(empty.read(), Ok(vec![]));
        // SAFETY: NULL bytes.
        let pin = unsafe { InBytes::new(ptr::null(), 0) };
        assert!(pin.optional_secret().unwrap().is_none());
        // SAFETY: NULL bytes with a length.
        let pin = unsafe { InBytes::new(ptr::null(), 4) };
        assert_eq!(pin.optional_secret().map(|_| ()), Err(Error::ArgumentsBad));
    }

    fn mech<T>(m: CK_MECHANISM_TYPE, p: &mut T) -> Result<Mechanism> {
        mech_raw(m, (p as *mut T).cast(), size_of::<T>() as CK_ULONG)
    }

    fn mech_raw(m: CK_MECHANISM_TYPE, p: *mut c_void, len: CK_ULONG) -> Result<Mechanism> {
        let raw = CK_MECHANISM {
            mechanism: m,
            pParameter: p,
            ulParameterLen: len,
        };
        // SAFETY: a live mechanism whose parameter is a live test variable.
        unsafe { InMechanism::new(&raw) }.read()
    }

    #[test]
    fn mechanisms_without_parameter() {
        for m in [
            CKM_RSA_PKCS,
            CKM_ECDSA,
            CKM_ECDSA_SHA256,
            CKM_SHA256_HMAC,
            CKM_SHA256,
            CKM_AES_ECB,
            CKM_EDDSA,
            CKM_AES_KEY_WRAP,
            CKM_GENERIC_SECRET_KEY_GEN,
        ] {
            assert_eq!(mech_raw(m, ptr::null_mut(), 0), Ok(Mechanism::plain(m)));
            // NULL wins over a stray length.
            assert_eq!(mech_raw(m, ptr::null_mut(), 8), Ok(Mechanism::plain(m)));
        }
        // SAFETY: NULL mechanism pointer.
        let none = unsafe { InMechanism::new(ptr::null()) };
        assert_eq!(none.read(), Err(Error::ArgumentsBad));
    }

    #[test]
    fn unknown_parameters_are_refused() {
        let mut junk: CK_ULONG = 5;
        assert_eq!(
            mech(CKM_RSA_PKCS, &mut junk),
            Err(Error::MechanismParamInvalid)
        );
        assert_eq!(
            mech(CKM_VENDOR_DEFINED + 1, &mut junk),
            Err(Error::MechanismParamInvalid)
        );
        // A wrong length for a known shape.
        assert_eq!(
            mech(CKM_RSA_PKCS_PSS, &mut junk),
            Err(Error::MechanismParamInvalid)
        );
        let mut iv8 = [0u8; 8];
        assert_eq!(
            mech(CKM_AES_CBC, &mut iv8),
            Err(Error::MechanismParamInvalid)
        );
    }

    #[test]
    fn rsa_parameters() {
        let mut pss = CK_RSA_PKCS_PSS_PARAMS {
            hashAlg: CKM_SHA256,
            mgf: CKG_MGF1_SHA256,
            sLen: 32,
        };
        assert_eq!(
            mech(CKM_SHA256_RSA_PKCS_PSS, &mut pss).unwrap().param,
            MechParam::RsaPss {
                hash_alg: CKM_SHA256,
                mgf: CKG_MGF1_SHA256,
                salt_len: 32
            }
        );
        let mut label = *b"label";
        let mut oaep = CK_RSA_PKCS_OAEP_PARAMS {
            hashAlg: CKM_SHA_1,
            mgf: CKG_MGF1_SHA1,
            source: CKZ_DATA_SPECIFIED,
            pSourceData: label.as_mut_ptr().cast(),
            ulSourceDataLen: 5,
        };
        assert_eq!(
            mech(CKM_RSA_PKCS_OAEP, &mut oaep).unwrap().param,
            MechParam::RsaOaep {
                hash_alg: CKM_SHA_1,
                mgf: CKG_MGF1_SHA1,
                source: CKZ_DATA_SPECIFIED,
                source_data: b"label".to_vec()
            }
        );
        oaep.pSourceData = ptr::null_mut();
        assert_eq!(
            mech(CKM_RSA_PKCS_OAEP, &mut oaep),
            Err(Error::MechanismParamInvalid)
        );
        oaep.ulSourceDataLen = 0;
        assert!(mech(CKM_RSA_PKCS_OAEP, &mut oaep).is_ok());
    }

    #[test]
    fn gcm_both_layouts() {
        let mut iv = [7u8; 12];
        let mut aad = *b"aad";
        let mut v3 = CK_GCM_PARAMS {
            pIv: iv.as_mut_ptr(),
            ulIvLen: 12,
            ulIvBits: 96,
            pAAD: aad.as_mut_ptr(),
            ulAADLen: 3,
            ulTagBits: 128,
        };
        let want = MechParam::Gcm {
            iv: vec![7; 12],
            iv_bits: 96,
            aad: b"aad".to_vec(),
            tag_bits: 128,
        };
        assert_eq!(mech(CKM_AES_GCM, &mut v3).unwrap().param, want);
        let mut v240 = GcmParams240 {
            p_iv: iv.as_mut_ptr(),
            ul_iv_len: 12,
            p_aad: aad.as_mut_ptr(),
            ul_aad_len: 3,
            ul_tag_bits: 128,
        };
        assert_eq!(size_of::<GcmParams240>(), 40);
        assert_eq!(mech(CKM_AES_GCM, &mut v240).unwrap().param, want);
        let mut odd = [0u8; 44];
        assert_eq!(
            mech(CKM_AES_GCM, &mut odd),
            Err(Error::MechanismParamInvalid)
        );
    }

    #[test]
    fn aes_and_des_parameters() {
        let mut iv = [3u8; 16];
        assert_eq!(
            mech(CKM_AES_CBC_PAD, &mut iv).unwrap().param,
            MechParam::Bytes(vec![3; 16])
        );
        let mut iv8 = [4u8; 8];
        assert_eq!(
            mech(CKM_DES3_CBC, &mut iv8).unwrap().param,
            MechParam::Bytes(vec![4; 8])
        );
        assert_eq!(
            mech(CKM_AES_KEY_WRAP, &mut iv8).unwrap().param,
            MechParam::Bytes(vec![4; 8])
        );
        let mut ctr = CK_AES_CTR_PARAMS {
            ulCounterBits: 32,
            cb: [9; 16],
        };
        assert_eq!(
            mech(CKM_AES_CTR, &mut ctr).unwrap().param,
            MechParam::Ctr {
                counter_bits: 32,
                cb: [9; 16]
            }
        );
        let mut data = [1u8; 32];
        let mut cbc_data = CK_AES_CBC_ENCRYPT_DATA_PARAMS {
            iv: [2; 16],
            pData: data.as_mut_ptr(),
            length: 32,
        };
        assert_eq!(
            mech(CKM_AES_CBC_ENCRYPT_DATA, &mut cbc_data).unwrap().param,
            MechParam::CbcEncryptData {
                iv: vec![2; 16],
                data: vec![1; 32]
            }
        );
        let mut mac_len: CK_MAC_GENERAL_PARAMS = 16;
        assert_eq!(
            mech(CKM_SHA256_HMAC_GENERAL, &mut mac_len).unwrap().param,
            MechParam::Ulong(16)
        );
        let mut s = CK_KEY_DERIVATION_STRING_DATA {
            pData: data.as_mut_ptr(),
            ulLen: 16,
        };
        assert_eq!(
            mech(CKM_AES_ECB_ENCRYPT_DATA, &mut s).unwrap().param,
            MechParam::DerivationString(vec![1; 16])
        );
    }

    #[test]
    fn ec_parameters() {
        let mut point = [4u8; 65];
        let mut ecdh = CK_ECDH1_DERIVE_PARAMS {
            kdf: CKD_NULL,
            ulSharedDataLen: 0,
            pSharedData: ptr::null_mut(),
            ulPublicDataLen: 65,
            pPublicData: point.as_mut_ptr(),
        };
        assert_eq!(
            mech(CKM_ECDH1_DERIVE, &mut ecdh).unwrap().param,
            MechParam::Ecdh1Derive {
                kdf: CKD_NULL,
                shared_data: vec![],
                public_data: vec![4; 65]
            }
        );
        // CKM_DH_PKCS_DERIVE: the peer's public value, raw bytes.
        let mut peer = [7u8; 256];
        assert_eq!(
            mech(CKM_DH_PKCS_DERIVE, &mut peer).unwrap().param,
            MechParam::Bytes(vec![7; 256])
        );
        let mut ctx = *b"ctx";
        let mut eddsa = CK_EDDSA_PARAMS {
            phFlag: CK_TRUE,
            ulContextDataLen: 3,
            pContextData: ctx.as_mut_ptr(),
        };
        assert_eq!(
            mech(CKM_EDDSA, &mut eddsa).unwrap().param,
            MechParam::Eddsa {
                ph_flag: true,
                context: b"ctx".to_vec()
            }
        );
    }

    #[test]
    fn output_buffer_convention() {
        let data = [1u8, 2, 3, 4];
        let mut len: CK_ULONG = 0;
        // SAFETY: NULL buffer, live length.
        let out = unsafe { OutBuf::new(ptr::null_mut(), &mut len) };
        assert_eq!(out.deliver(&data), Ok(Delivery::LengthOnly));
        assert_eq!(len, 4);
        let mut buf = [0u8; 8];
        len = 2;
        // SAFETY: live buffer of 8 bytes (we claim 2).
        let out = unsafe { OutBuf::new(buf.as_mut_ptr(), &mut len) };
        assert_eq!(out.deliver(&data), Err(Error::BufferTooSmall));
        assert_eq!(len, 4);
        len = 8;
        // SAFETY: live buffer of 8 bytes.
        let out = unsafe { OutBuf::new(buf.as_mut_ptr(), &mut len) };
        assert_eq!(out.deliver(&data), Ok(Delivery::Written));
        assert_eq!((len, &buf[..4]), (4, &data[..]));
        // SAFETY: NULL length pointer.
        let out = unsafe { OutBuf::new(buf.as_mut_ptr(), ptr::null_mut()) };
        assert_eq!(out.deliver(&data), Err(Error::ArgumentsBad));
    }

    #[test]
    fn list_convention() {
        let mut count: CK_ULONG = 0;
        // SAFETY: NULL list, live count.
        let l = unsafe { OutList::<CK_ULONG>::new(ptr::null_mut(), &mut count) };
        assert_eq!(l.deliver(&[5, 6]), Ok(()));
        assert_eq!(count, 2);
        let mut arr = [0 as CK_ULONG; 2];
        count = 1;
        // SAFETY: live array.
        let l = unsafe { OutList::new(arr.as_mut_ptr(), &mut count) };
        assert_eq!(l.deliver(&[5, 6]), Err(Error::BufferTooSmall));
        count = 2;
        // SAFETY: live array.
        let l = unsafe { OutList::new(arr.as_mut_ptr(), &mut count) };
        assert_eq!(l.deliver(&[5, 6]), Ok(()));
        assert_eq!(arr, [5, 6]);
    }

    fn get(t: &mut [CK_ATTRIBUTE], results: &[AttrResult]) -> Result<()> {
        // SAFETY: a live array whose values point to live test buffers.
        let mut out = unsafe { OutTemplate::new(t.as_mut_ptr(), t.len() as CK_ULONG) };
        out.write(results)
    }

    #[test]
    fn get_attribute_value_writing() {
        let results = [
            AttrResult::Value(AttrValue::Leaf(Value::Bool(true))),
            AttrResult::Value(AttrValue::Leaf(Value::Ulong(CKK_EC))),
            AttrResult::Value(AttrValue::Leaf(Value::Bytes(b"label".to_vec()))),
            AttrResult::Value(AttrValue::Leaf(Value::Mechanisms(vec![1, 2]))),
        ];
        let blank = |t| CK_ATTRIBUTE {
            type_: t,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        };
        let mut t = [
            blank(CKA_SIGN),
            blank(CKA_KEY_TYPE),
            blank(CKA_LABEL),
            blank(CKA_ALLOWED_MECHANISMS),
        ];
        assert_eq!(get(&mut t, &results), Ok(()));
        let lens: Vec<_> = t.iter().map(|a| a.ulValueLen).collect();
        assert_eq!(
            lens,
            [1, ULONG_LEN as CK_ULONG, 5, 2 * ULONG_LEN as CK_ULONG]
        );

        let mut b: CK_BBOOL = 0;
        let mut k: CK_ULONG = 0;
        let mut label = [0u8; 3];
        let mut mechs = [0 as CK_ULONG; 2];
        t[0] = attr(CKA_SIGN, &mut b);
        t[1] = attr(CKA_KEY_TYPE, &mut k);
        t[2] = attr(CKA_LABEL, &mut label);
        t[3] = attr(CKA_ALLOWED_MECHANISMS, &mut mechs);
        assert_eq!(get(&mut t, &results), Err(Error::BufferTooSmall));
        assert_eq!((b, k, mechs), (1, CKK_EC, [1, 2]));
        assert_eq!(t[2].ulValueLen, CK_UNAVAILABLE_INFORMATION);

        // Priority: sensitive > type invalid > buffer too small, and every
        // attribute is processed.
        let mut small = [0u8; 1];
        let mut t = [attr(CKA_LABEL, &mut small), blank(CKA_VALUE), blank(CKA_ID)];
        let r = [
            AttrResult::Value(AttrValue::Leaf(Value::Bytes(b"xx".to_vec()))),
            AttrResult::Invalid,
            AttrResult::Sensitive,
        ];
        assert_eq!(get(&mut t, &r), Err(Error::AttributeSensitive));
        assert!(t.iter().all(|a| a.ulValueLen == CK_UNAVAILABLE_INFORMATION));
        assert_eq!(get(&mut t[..2], &r[..2]), Err(Error::AttributeTypeInvalid));
        // Count mismatch from the agent is a device error.
        assert_eq!(get(&mut t, &r[..1]), Err(Error::UnexpectedAnswer));
    }

    /// A template reused as a failed call left it (`ulValueLen` set to
    /// `CK_UNAVAILABLE_INFORMATION`, `pValue` unchanged) is not taken for
    /// a buffer of that length: nothing is written past the caller's
    /// buffers, leaf or nested.
    #[test]
    fn a_reused_template_is_not_written_past_its_buffers() {
        let mut buf = [0u8; 4];
        let mut t = [CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: buf.as_mut_ptr().cast(),
            ulValueLen: 1,
        }];
        let r = [AttrResult::Value(AttrValue::Leaf(Value::Bytes(
            b"xxxx".to_vec(),
        )))];
        assert_eq!(get(&mut t, &r), Err(Error::BufferTooSmall));
        assert_eq!(t[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
        // The same template again, as C hosts do.
        assert_eq!(get(&mut t, &r), Err(Error::BufferTooSmall));
        assert_eq!(t[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
        assert_eq!(buf, [0; 4]);

        // A nested template: the outer length, then an inner one.
        let blank = CK_ATTRIBUTE {
            type_: 0,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        };
        let mut inner = [blank; 2];
        let mut t = [CK_ATTRIBUTE {
            type_: CKA_WRAP_TEMPLATE,
            pValue: inner.as_mut_ptr().cast(),
            ulValueLen: CK_UNAVAILABLE_INFORMATION,
        }];
        let r = [AttrResult::Value(AttrValue::Template(vec![(
            CKA_LABEL,
            Value::Bytes(b"xxxx".to_vec()),
        )]))];
        assert_eq!(get(&mut t, &r), Err(Error::BufferTooSmall));
        assert_eq!(inner[0].type_, 0);
        let mut small = [0u8; 4];
        inner[0] = CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: small.as_mut_ptr().cast(),
            ulValueLen: CK_UNAVAILABLE_INFORMATION,
        };
        t[0].ulValueLen = (2 * ATTRIBUTE_LEN) as CK_ULONG;
        assert_eq!(get(&mut t, &r), Err(Error::BufferTooSmall));
        assert_eq!(inner[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
        assert_eq!(small, [0; 4]);
    }

    #[test]
    fn get_nested_template() {
        let results = [AttrResult::Value(AttrValue::Template(vec![
            (CKA_EXTRACTABLE, Value::Bool(false)),
            (CKA_LABEL, Value::Bytes(b"abc".to_vec())),
        ]))];
        let mut t = [CK_ATTRIBUTE {
            type_: CKA_WRAP_TEMPLATE,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        }];
        assert_eq!(get(&mut t, &results), Ok(()));
        assert_eq!(t[0].ulValueLen, (2 * ATTRIBUTE_LEN) as CK_ULONG);
        // Second call: an array of blank entries gets types and lengths.
        let blank = CK_ATTRIBUTE {
            type_: 0,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        };
        let mut nested = [blank; 2];
        t[0].pValue = nested.as_mut_ptr().cast();
        assert_eq!(get(&mut t, &results), Ok(()));
        assert_eq!(nested[0].type_, CKA_EXTRACTABLE);
        assert_eq!(nested[1].ulValueLen, 3);
        // Third call: buffers are filled.
        let mut b: CK_BBOOL = 1;
        let mut label = [0u8; 3];
        let mut filled = [attr(CKA_EXTRACTABLE, &mut b), attr(CKA_LABEL, &mut label)];
        t[0].pValue = filled.as_mut_ptr().cast();
        assert_eq!(get(&mut t, &results), Ok(()));
        assert_eq!((b, &label), (0, b"abc"));
        // Too small an outer array.
        t[0].ulValueLen = ATTRIBUTE_LEN as CK_ULONG;
        assert_eq!(get(&mut t, &results), Err(Error::BufferTooSmall));
        assert_eq!(t[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    }

    #[test]
    fn initialize_arguments() {
        unsafe extern "C" fn create(_: CK_VOID_PTR_PTR) -> CK_RV {
            CKR_OK
        }
        unsafe extern "C" fn other(_: CK_VOID_PTR) -> CK_RV {
            CKR_OK
        }
        let check = |a: &CK_C_INITIALIZE_ARGS| {
            // SAFETY: a live structure.
            unsafe { InitArgs::new((a as *const CK_C_INITIALIZE_ARGS).cast()) }.check()
        };
        let mut a = CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags: 0,
            pReserved: ptr::null_mut(),
        };
        assert_eq!(check(&a), Ok(()));
        a.flags = CKF_OS_LOCKING_OK;
        assert_eq!(check(&a), Ok(()));
        a.CreateMutex = Some(create);
        assert_eq!(check(&a), Err(Error::ArgumentsBad));
        a.DestroyMutex = Some(other);
        a.LockMutex = Some(other);
        a.UnlockMutex = Some(other);
        assert_eq!(check(&a), Ok(()));
        a.flags = 0;
        assert_eq!(check(&a), Err(Error::CantLock));
        let mut x = 0u8;
        a.pReserved = (&mut x as *mut u8).cast();
        assert_eq!(check(&a), Err(Error::ArgumentsBad));
        // SAFETY: NULL is allowed.
        assert_eq!(unsafe { InitArgs::new(ptr::null()) }.check(), Ok(()));
    }

    #[test]
    fn padding() {
        assert_eq!(&pad::<8>("abc"), b"abc     ");
        assert_eq!(&pad::<4>("abcdef"), b"abcd");
        // "é" is two bytes: never split a character.
        assert_eq!(&pad::<4>("abcé"), b"abc ");
    }

    /// An answer of the wrong shape for its type is refused before anything
    /// is written: a template answered for `CKA_LABEL` would have the
    /// caller's label bytes read as `CK_ATTRIBUTE`s and written through, a
    /// label answered for `CKA_WRAP_TEMPLATE` would overwrite the caller's
    /// attribute array. (Found by the `module_edge` fuzz target.)
    #[test]
    fn an_answer_of_another_shape_than_its_type_is_refused_unwritten() {
        // Room for one nested attribute, as bytes of a byte-valued type
        // (aligned as an attribute array would be).
        let mut label = [0u64; ATTRIBUTE_LEN / 8];
        let mut t = [CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: label.as_mut_ptr().cast(),
            ulValueLen: ATTRIBUTE_LEN as CK_ULONG,
        }];
        let template = AttrResult::Value(AttrValue::Template(vec![(
            CKA_EXTRACTABLE,
            Value::Bool(false),
        )]));
        assert_eq!(
            get(&mut t, std::slice::from_ref(&template)),
            Err(Error::UnexpectedAnswer)
        );
        assert_eq!(
            label,
            [0u64; ATTRIBUTE_LEN / 8],
            "the caller's bytes were written"
        );
        assert_eq!(t[0].ulValueLen, ATTRIBUTE_LEN as CK_ULONG);

        let mut value: CK_BBOOL = CK_TRUE;
        let mut nested = [attr(CKA_EXTRACTABLE, &mut value)];
        let before = (nested[0].type_, nested[0].pValue, nested[0].ulValueLen);
        let mut t = [CK_ATTRIBUTE {
            type_: CKA_WRAP_TEMPLATE,
            pValue: nested.as_mut_ptr().cast(),
            ulValueLen: ATTRIBUTE_LEN as CK_ULONG,
        }];
        let leaf = AttrResult::Value(AttrValue::Leaf(Value::Bytes(vec![0xff; 8])));
        assert_eq!(get(&mut t, &[leaf]), Err(Error::UnexpectedAnswer));
        assert_eq!(
            (nested[0].type_, nested[0].pValue, nested[0].ulValueLen),
            before,
            "the caller's attribute array was overwritten"
        );
        // The same answers for the right types are written.
        let mut nested = [attr(CKA_EXTRACTABLE, &mut value)];
        let mut t = [CK_ATTRIBUTE {
            type_: CKA_WRAP_TEMPLATE,
            pValue: nested.as_mut_ptr().cast(),
            ulValueLen: ATTRIBUTE_LEN as CK_ULONG,
        }];
        assert_eq!(get(&mut t, &[template]), Ok(()));
        assert_eq!(value, CK_FALSE);
    }
}
