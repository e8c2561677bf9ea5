//! `libkeyward_faultlib.so`: a PKCS#11 library for tests that forwards
//! every call to a real one (SoftHSM2) and injects faults.
//!
//! - `KEYWARD_FAULT_LIBRARY`: the library calls are forwarded to.
//! - `KEYWARD_FAULT_CONTROL`: the control file, read again whenever its
//!   modification time or length changes (checked on each call of a
//!   function that can be faulted). Absent or empty: no fault.
//!
//! One fault per line (`#` starts a comment):
//!
//! ```text
//! C_Sign rv=CKR_DEVICE_ERROR label=key-a every=2
//! C_Sign sleep=30000 label=key-a
//! C_FindObjectsInit rv=0x30
//! ```
//!
//! `rv=` answers that code (a name below or a number) instead of the call's
//! own; `sleep=` waits that many milliseconds first (then makes the call,
//! or answers `rv=` when given too); `label=` limits the fault to calls
//! concerning the key labelled so (the key of an operation's init, kept per
//! session for the operation's later calls, the base key of `C_DeriveKey`,
//! the unwrapping key of `C_UnwrapKey`, or the `CKA_LABEL` of a search or
//! generation template); `every=N` faults the N-th matching call, the
//! 2N-th, and so on (counted from the last reading of the file).
//!
//! A faulted call that ends an operation (`C_Sign`, `C_Encrypt`,
//! `C_Decrypt`, `C_SignFinal`, `C_Verify`, `C_FindObjects`) ends it in the
//! real library too, as a failing call does in PKCS#11.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use cryptoki_sys as ck;

/// The forwarded library and its function list.
struct Real {
    _lib: libloading::Library,
    list: ck::CK_FUNCTION_LIST,
}

static REAL: OnceLock<Option<Real>> = OnceLock::new();
static OURS: OnceLock<ck::CK_FUNCTION_LIST> = OnceLock::new();
static STATE: Mutex<Option<State>> = Mutex::new(None);

fn real() -> Option<&'static Real> {
    REAL.get_or_init(|| {
        let path = std::env::var_os("KEYWARD_FAULT_LIBRARY")?;
        // SAFETY: loading a PKCS#11 library runs its initialisers, which
        // is what loading it for the agent would do.
        let lib = unsafe { libloading::Library::new(&path) }.ok()?;
        // SAFETY: `C_GetFunctionList` has this type in every PKCS#11
        // library.
        let get: libloading::Symbol<'_, ck::CK_C_GetFunctionList> =
            unsafe { lib.get(b"C_GetFunctionList\0") }.ok()?;
        let get = (*get)?;
        let mut list: ck::CK_FUNCTION_LIST_PTR = std::ptr::null_mut();
        // SAFETY: `list` is a valid out-parameter.
        if unsafe { get(&mut list) } != ck::CKR_OK || list.is_null() {
            return None;
        }
        // SAFETY: the library returned a valid list, alive while it is
        // loaded (kept in `Real`).
        let list = unsafe { *list };
        Some(Real { _lib: lib, list })
    })
    .as_ref()
}

/// Calls the real library's function, or answers
/// `CKR_FUNCTION_NOT_SUPPORTED`.
macro_rules! forward {
    ($f:ident ( $($arg:expr),* $(,)? )) => {
        match real().and_then(|r| r.list.$f) {
            Some(f) => f($($arg),*),
            None => ck::CKR_FUNCTION_NOT_SUPPORTED,
        }
    };
}

/// # Safety
///
/// `list` must be a valid pointer to write the list's address to.
#[allow(non_snake_case)] // The name PKCS#11 gives it.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(list: ck::CK_FUNCTION_LIST_PTR_PTR) -> ck::CK_RV {
    if list.is_null() {
        return ck::CKR_ARGUMENTS_BAD;
    }
    let Some(real) = real() else {
        return ck::CKR_GENERAL_ERROR;
    };
    let ours = OURS.get_or_init(|| {
        let mut l = real.list;
        l.C_OpenSession = Some(open_session);
        l.C_Login = Some(login);
        l.C_FindObjectsInit = Some(find_objects_init);
        l.C_FindObjects = Some(find_objects);
        l.C_SignInit = Some(sign_init);
        l.C_Sign = Some(sign);
        l.C_SignFinal = Some(sign_final);
        l.C_VerifyInit = Some(verify_init);
        l.C_Verify = Some(verify);
        l.C_EncryptInit = Some(encrypt_init);
        l.C_Encrypt = Some(encrypt);
        l.C_DecryptInit = Some(decrypt_init);
        l.C_Decrypt = Some(decrypt);
        l.C_GenerateKeyPair = Some(generate_key_pair);
        l.C_GenerateKey = Some(generate_key);
        l.C_DeriveKey = Some(derive_key);
        l.C_UnwrapKey = Some(unwrap_key);
        l
    });
    // SAFETY: checked non-null above; the list lives as long as the
    // library is loaded and is never written through.
    unsafe { *list = ours as *const ck::CK_FUNCTION_LIST as ck::CK_FUNCTION_LIST_PTR };
    ck::CKR_OK
}

/// One line of the control file.
#[derive(Debug)]
struct Rule {
    function: String,
    rv: Option<ck::CK_RV>,
    sleep: Duration,
    label: Option<Vec<u8>>,
    every: u64,
    seen: u64,
}

#[derive(Debug, Default)]
struct State {
    stamp: Option<(SystemTime, u64)>,
    rules: Vec<Rule>,
    /// The key label of each session's operation, by kind.
    labels: HashMap<(ck::CK_SESSION_HANDLE, &'static str), Vec<u8>>,
}

const NAMES: &[(&str, ck::CK_RV)] = &[
    ("CKR_GENERAL_ERROR", ck::CKR_GENERAL_ERROR),
    ("CKR_FUNCTION_FAILED", ck::CKR_FUNCTION_FAILED),
    ("CKR_DEVICE_ERROR", ck::CKR_DEVICE_ERROR),
    ("CKR_DEVICE_MEMORY", ck::CKR_DEVICE_MEMORY),
    ("CKR_DEVICE_REMOVED", ck::CKR_DEVICE_REMOVED),
    ("CKR_SESSION_HANDLE_INVALID", ck::CKR_SESSION_HANDLE_INVALID),
    ("CKR_SESSION_CLOSED", ck::CKR_SESSION_CLOSED),
    ("CKR_TOKEN_NOT_PRESENT", ck::CKR_TOKEN_NOT_PRESENT),
    ("CKR_USER_NOT_LOGGED_IN", ck::CKR_USER_NOT_LOGGED_IN),
    ("CKR_PIN_INCORRECT", ck::CKR_PIN_INCORRECT),
];

fn parse_rv(v: &str) -> Option<ck::CK_RV> {
    if let Some(&(_, rv)) = NAMES.iter().find(|(n, _)| *n == v) {
        return Some(rv);
    }
    match v.strip_prefix("0x") {
        Some(hex) => ck::CK_RV::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

fn parse(text: &str) -> Vec<Rule> {
    let mut rules = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        let Some(function) = words.next() else {
            continue;
        };
        let mut rule = Rule {
            function: function.to_owned(),
            rv: None,
            sleep: Duration::ZERO,
            label: None,
            every: 1,
            seen: 0,
        };
        let mut valid = true;
        for w in words {
            match w.split_once('=') {
                Some(("rv", v)) => {
                    rule.rv = parse_rv(v).or_else(|| {
                        valid = false;
                        None
                    })
                }
                Some(("sleep", v)) => match v.parse() {
                    Ok(ms) => rule.sleep = Duration::from_millis(ms),
                    Err(_) => valid = false,
                },
                Some(("label", v)) => rule.label = Some(v.as_bytes().to_vec()),
                Some(("every", v)) => match v.parse::<u64>() {
                    Ok(n) if n > 0 => rule.every = n,
                    _ => valid = false,
                },
                _ => valid = false,
            }
        }
        if valid {
            rules.push(rule);
        } else {
            eprintln!("keyward-faultlib: ignored control line {line:?}");
        }
    }
    rules
}

fn state<T>(f: impl FnOnce(&mut State) -> T) -> T {
    let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    f(guard.get_or_insert_with(State::default))
}

/// Reads the control file again if it changed.
fn refresh(st: &mut State) {
    let Some(path) = std::env::var_os("KEYWARD_FAULT_CONTROL") else {
        st.rules.clear();
        return;
    };
    let stamp = std::fs::metadata(&path)
        .ok()
        .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
    if stamp == st.stamp {
        return;
    }
    st.stamp = stamp;
    st.rules = std::fs::read_to_string(&path)
        .map(|t| parse(&t))
        .unwrap_or_default();
}

/// The fault for a call of `function` concerning `label`: sleeps as the
/// rule says, then the code to answer instead of the call, if any.
fn fault(function: &str, label: Option<&[u8]>) -> Option<ck::CK_RV> {
    let (sleep, rv) = state(|st| {
        refresh(st);
        for rule in &mut st.rules {
            if rule.function != function {
                continue;
            }
            if let Some(want) = &rule.label {
                if label != Some(want.as_slice()) {
                    continue;
                }
            }
            rule.seen += 1;
            if rule.seen % rule.every == 0 {
                return (rule.sleep, rule.rv);
            }
        }
        (Duration::ZERO, None)
    });
    if !sleep.is_zero() {
        std::thread::sleep(sleep);
    }
    rv
}

/// The `CKA_LABEL` of `key` (read through `session`).
fn key_label(session: ck::CK_SESSION_HANDLE, key: ck::CK_OBJECT_HANDLE) -> Option<Vec<u8>> {
    let mut attr = ck::CK_ATTRIBUTE {
        type_: ck::CKA_LABEL,
        pValue: std::ptr::null_mut(),
        ulValueLen: 0,
    };
    // SAFETY: a length query: one attribute, no buffer.
    if unsafe { forward!(C_GetAttributeValue(session, key, &mut attr, 1)) } != ck::CKR_OK {
        return None;
    }
    let mut value = vec![0u8; usize::try_from(attr.ulValueLen).ok()?];
    attr.pValue = value.as_mut_ptr().cast();
    // SAFETY: `value` holds `ulValueLen` bytes, alive for the call.
    if unsafe { forward!(C_GetAttributeValue(session, key, &mut attr, 1)) } != ck::CKR_OK {
        return None;
    }
    value.truncate(usize::try_from(attr.ulValueLen).ok()?);
    Some(value)
}

/// The `CKA_LABEL` in a template.
///
/// # Safety
///
/// `template` must point to `count` attributes (or be null).
unsafe fn template_label(template: ck::CK_ATTRIBUTE_PTR, count: ck::CK_ULONG) -> Option<Vec<u8>> {
    if template.is_null() {
        return None;
    }
    // SAFETY: the caller's template of `count` attributes.
    let attrs = unsafe { std::slice::from_raw_parts(template, usize::try_from(count).ok()?) };
    let a = attrs.iter().find(|a| a.type_ == ck::CKA_LABEL)?;
    if a.pValue.is_null() {
        return None;
    }
    // SAFETY: the attribute's value of `ulValueLen` bytes.
    let v = unsafe {
        std::slice::from_raw_parts(a.pValue as *const u8, usize::try_from(a.ulValueLen).ok()?)
    };
    Some(v.to_vec())
}

fn note_label(session: ck::CK_SESSION_HANDLE, kind: &'static str, label: Option<Vec<u8>>) {
    state(|st| match label {
        Some(l) => {
            st.labels.insert((session, kind), l);
        }
        None => {
            st.labels.remove(&(session, kind));
        }
    });
}

fn label_of(session: ck::CK_SESSION_HANDLE, kind: &'static str) -> Option<Vec<u8>> {
    state(|st| st.labels.get(&(session, kind)).cloned())
}

/// Ends an operation in the real library with a call into a scratch
/// buffer (the faulted call's output is not given).
fn end_with_scratch(
    call: impl FnOnce(ck::CK_BYTE_PTR, ck::CK_ULONG_PTR) -> ck::CK_RV,
) -> ck::CK_RV {
    let mut scratch = vec![0u8; 16 * 1024];
    let mut len = scratch.len() as ck::CK_ULONG;
    call(scratch.as_mut_ptr(), &mut len)
}

extern "C" fn open_session(
    slot: ck::CK_SLOT_ID,
    flags: ck::CK_FLAGS,
    app: ck::CK_VOID_PTR,
    notify: ck::CK_NOTIFY,
    session: ck::CK_SESSION_HANDLE_PTR,
) -> ck::CK_RV {
    if let Some(rv) = fault("C_OpenSession", None) {
        return rv;
    }
    // SAFETY: the caller's arguments, passed on unchanged.
    unsafe { forward!(C_OpenSession(slot, flags, app, notify, session)) }
}

extern "C" fn login(
    session: ck::CK_SESSION_HANDLE,
    user: ck::CK_USER_TYPE,
    pin: ck::CK_UTF8CHAR_PTR,
    len: ck::CK_ULONG,
) -> ck::CK_RV {
    if let Some(rv) = fault("C_Login", None) {
        return rv;
    }
    // SAFETY: the caller's arguments, passed on unchanged.
    unsafe { forward!(C_Login(session, user, pin, len)) }
}

extern "C" fn find_objects_init(
    session: ck::CK_SESSION_HANDLE,
    template: ck::CK_ATTRIBUTE_PTR,
    count: ck::CK_ULONG,
) -> ck::CK_RV {
    // SAFETY: the caller's template of `count` attributes.
    let label = unsafe { template_label(template, count) };
    if let Some(rv) = fault("C_FindObjectsInit", label.as_deref()) {
        return rv;
    }
    note_label(session, "find", label);
    // SAFETY: the caller's arguments, passed on unchanged.
    unsafe { forward!(C_FindObjectsInit(session, template, count)) }
}

extern "C" fn find_objects(
    session: ck::CK_SESSION_HANDLE,
    objects: ck::CK_OBJECT_HANDLE_PTR,
    max: ck::CK_ULONG,
    count: ck::CK_ULONG_PTR,
) -> ck::CK_RV {
    if let Some(rv) = fault("C_FindObjects", label_of(session, "find").as_deref()) {
        // SAFETY: no pointers.
        unsafe { forward!(C_FindObjectsFinal(session)) };
        return rv;
    }
    // SAFETY: the caller's arguments, passed on unchanged.
    unsafe { forward!(C_FindObjects(session, objects, max, count)) }
}

/// An operation's init: the key's label is kept for its later calls.
macro_rules! init {
    ($name:ident, $f:ident, $kind:literal) => {
        extern "C" fn $name(
            session: ck::CK_SESSION_HANDLE,
            mechanism: ck::CK_MECHANISM_PTR,
            key: ck::CK_OBJECT_HANDLE,
        ) -> ck::CK_RV {
            let label = key_label(session, key);
            if let Some(rv) = fault(stringify!($f), label.as_deref()) {
                return rv;
            }
            note_label(session, $kind, label);
            // SAFETY: the caller's arguments, passed on unchanged.
            unsafe { forward!($f(session, mechanism, key)) }
        }
    };
}

init!(sign_init, C_SignInit, "sign");
init!(verify_init, C_VerifyInit, "verify");
init!(encrypt_init, C_EncryptInit, "encrypt");
init!(decrypt_init, C_DecryptInit, "decrypt");

/// A single-part call with output (`C_Sign`, `C_Encrypt`, `C_Decrypt`).
macro_rules! single {
    ($name:ident, $f:ident, $kind:literal) => {
        extern "C" fn $name(
            session: ck::CK_SESSION_HANDLE,
            data: ck::CK_BYTE_PTR,
            len: ck::CK_ULONG,
            out: ck::CK_BYTE_PTR,
            out_len: ck::CK_ULONG_PTR,
        ) -> ck::CK_RV {
            if let Some(rv) = fault(stringify!($f), label_of(session, $kind).as_deref()) {
                // SAFETY: the caller's input; a scratch buffer for output.
                end_with_scratch(|o, l| unsafe { forward!($f(session, data, len, o, l)) });
                return rv;
            }
            // SAFETY: the caller's arguments, passed on unchanged.
            unsafe { forward!($f(session, data, len, out, out_len)) }
        }
    };
}

single!(sign, C_Sign, "sign");
single!(encrypt, C_Encrypt, "encrypt");
single!(decrypt, C_Decrypt, "decrypt");

extern "C" fn sign_final(
    session: ck::CK_SESSION_HANDLE,
    out: ck::CK_BYTE_PTR,
    out_len: ck::CK_ULONG_PTR,
) -> ck::CK_RV {
    if let Some(rv) = fault("C_SignFinal", label_of(session, "sign").as_deref()) {
        // SAFETY: a scratch buffer for output.
        end_with_scratch(|o, l| unsafe { forward!(C_SignFinal(session, o, l)) });
        return rv;
    }
    // SAFETY: the caller's arguments, passed on unchanged.
    unsafe { forward!(C_SignFinal(session, out, out_len)) }
}

extern "C" fn verify(
    session: ck::CK_SESSION_HANDLE,
    data: ck::CK_BYTE_PTR,
    len: ck::CK_ULONG,
    signature: ck::CK_BYTE_PTR,
    signature_len: ck::CK_ULONG,
) -> ck::CK_RV {
    // SAFETY: the caller's arguments, passed on unchanged.
    let real = || unsafe { forward!(C_Verify(session, data, len, signature, signature_len)) };
    match fault("C_Verify", label_of(session, "verify").as_deref()) {
        Some(rv) => {
            real();
            rv
        }
        None => real(),
    }
}

extern "C" fn generate_key_pair(
    session: ck::CK_SESSION_HANDLE,
    mechanism: ck::CK_MECHANISM_PTR,
    public: ck::CK_ATTRIBUTE_PTR,
    public_count: ck::CK_ULONG,
    private: ck::CK_ATTRIBUTE_PTR,
    private_count: ck::CK_ULONG,
    public_key: ck::CK_OBJECT_HANDLE_PTR,
    private_key: ck::CK_OBJECT_HANDLE_PTR,
) -> ck::CK_RV {
    // SAFETY: the caller's templates of their counts.
    let label = unsafe {
        template_label(private, private_count).or_else(|| template_label(public, public_count))
    };
    if let Some(rv) = fault("C_GenerateKeyPair", label.as_deref()) {
        return rv;
    }
    // SAFETY: the caller's arguments, passed on unchanged.
    unsafe {
        forward!(C_GenerateKeyPair(
            session,
            mechanism,
            public,
            public_count,
            private,
            private_count,
            public_key,
            private_key
        ))
    }
}

extern "C" fn generate_key(
    session: ck::CK_SESSION_HANDLE,
    mechanism: ck::CK_MECHANISM_PTR,
    template: ck::CK_ATTRIBUTE_PTR,
    count: ck::CK_ULONG,
    key: ck::CK_OBJECT_HANDLE_PTR,
) -> ck::CK_RV {
    // SAFETY: the caller's template of `count` attributes.
    let label = unsafe { template_label(template, count) };
    if let Some(rv) = fault("C_GenerateKey", label.as_deref()) {
        return rv;
    }
    // SAFETY: the caller's arguments, passed on unchanged.
    unsafe { forward!(C_GenerateKey(session, mechanism, template, count, key)) }
}

extern "C" fn derive_key(
    session: ck::CK_SESSION_HANDLE,
    mechanism: ck::CK_MECHANISM_PTR,
    base: ck::CK_OBJECT_HANDLE,
    template: ck::CK_ATTRIBUTE_PTR,
    count: ck::CK_ULONG,
    key: ck::CK_OBJECT_HANDLE_PTR,
) -> ck::CK_RV {
    if let Some(rv) = fault("C_DeriveKey", key_label(session, base).as_deref()) {
        return rv;
    }
    // SAFETY: the caller's arguments, passed on unchanged.
    unsafe { forward!(C_DeriveKey(session, mechanism, base, template, count, key)) }
}

extern "C" fn unwrap_key(
    session: ck::CK_SESSION_HANDLE,
    mechanism: ck::CK_MECHANISM_PTR,
    unwrapping: ck::CK_OBJECT_HANDLE,
    wrapped: ck::CK_BYTE_PTR,
    wrapped_len: ck::CK_ULONG,
    template: ck::CK_ATTRIBUTE_PTR,
    count: ck::CK_ULONG,
    key: ck::CK_OBJECT_HANDLE_PTR,
) -> ck::CK_RV {
    if let Some(rv) = fault("C_UnwrapKey", key_label(session, unwrapping).as_deref()) {
        return rv;
    }
    // SAFETY: the caller's arguments, passed on unchanged.
    unsafe {
        forward!(C_UnwrapKey(
            session,
            mechanism,
            unwrapping,
            wrapped,
            wrapped_len,
            template,
            count,
            key
        ))
    }
}
