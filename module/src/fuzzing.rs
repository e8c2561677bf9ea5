//! Entry points for the fuzz target `module_edge` (the `fuzzing` feature,
//! off by default): the module's conversions between the C structures a
//! caller passes and the protocol's types, exactly as the entry points use
//! them ([`crate::ffi`]), with their errors as the `CK_RV` the caller sees.

use keyward_protocol::{AttrResult, Attribute, Mechanism};
use pkcs11_sys::{CK_ATTRIBUTE, CK_MECHANISM, CK_RV, CK_ULONG};

use crate::ffi::{InMechanism, InTemplate, OutTemplate};

/// An input template as `C_CreateObject`, `C_FindObjectsInit`, ... read
/// it.
///
/// # Safety
/// As for those calls: `ptr` is NULL or valid for `count` attributes, each
/// value NULL or valid for its length (nested templates likewise).
pub unsafe fn read_template(
    ptr: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
) -> Result<Vec<Attribute>, CK_RV> {
    // SAFETY: the function's contract is `InTemplate::new`'s.
    unsafe { InTemplate::new(ptr, count) }
        .read()
        .map_err(|e| e.rv())
}

/// A mechanism as `C_SignInit`, `C_GenerateKey`, ... read it.
///
/// # Safety
/// `ptr` is NULL or points to a readable `CK_MECHANISM` whose parameter
/// (and the buffers inside it) are valid for their lengths.
pub unsafe fn read_mechanism(ptr: *const CK_MECHANISM) -> Result<Mechanism, CK_RV> {
    // SAFETY: the function's contract is `InMechanism::new`'s.
    unsafe { InMechanism::new(ptr) }.read().map_err(|e| e.rv())
}

/// `C_GetAttributeValue`'s template handling: the types read from the
/// caller's template, `answer` (the agent's results for them) written
/// back into it.
///
/// # Safety
/// As for `C_GetAttributeValue`: `ptr` is NULL or valid for reads and
/// writes of `count` attributes, each non-NULL value writable for its
/// length (template-valued types: attributes obeying the same rule).
pub unsafe fn get_attribute_value(
    ptr: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    answer: impl FnOnce(&[u64]) -> Vec<AttrResult>,
) -> Result<(), CK_RV> {
    // SAFETY: the function's contract is `OutTemplate::new`'s.
    let mut template = unsafe { OutTemplate::new(ptr, count) };
    let types = template.types().map_err(|e| e.rv())?;
    template.write(&answer(&types)).map_err(|e| e.rv())
}
