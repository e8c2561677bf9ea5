//! The agent's only foreign calls: the backend's PKCS#11 library.
//!
//! Why `cryptoki-sys` and not `cryptoki`'s high-level API: a faithful
//! forwarder must make exactly the call the application made — split
//! `C_*Init` and single-part calls, raw mechanism parameters, per-attribute
//! `C_GetAttributeValue` results (sensitive vs. invalid) and the backend's own
//! `CK_RV` — which the high-level API does not express. So the library is
//! loaded with `cryptoki_sys::Pkcs11` (libloading), `C_GetFunctionList` is
//! called once, and every call goes through the `CK_FUNCTION_LIST` it returns.
//! A missing function pointer is `CKR_FUNCTION_NOT_SUPPORTED`, never a panic.
//!
//! Every `unsafe` block is a call into the library, with pointers to buffers
//! owned by the calling Rust frame (or by a [`CTemplate`] / [`CMechanism`]
//! alive for the call) and lengths that match those buffers.

use std::ffi::c_void;
use std::mem::size_of;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cryptoki_sys as ck;
use keyward_protocol::attr::{kind_of, AttrKind};
use keyward_protocol::{AttrResult, AttrValue, Attribute, Mechanism, MechanismInfo, Op, Version};
use zeroize::Zeroizing;

use super::cdata::{value_from_bytes, CMechanism, CTemplate, Words};
use super::{Backend, BackendObject, BackendSession, BackendTokenInfo, LibraryInfo};
use crate::config::BackendSelector;
use crate::error::{Error, Result};

/// Largest output the agent accepts from one backend call (the frame limit).
const MAX_OUTPUT: usize = keyward_protocol::MAX_FRAME_LEN;
/// `C_FindObjects` batch size.
const FIND_BATCH: usize = 256;

/// Calls a function of the list, or answers `CKR_FUNCTION_NOT_SUPPORTED`.
/// Must be used inside an `unsafe` block that states why the arguments are
/// valid.
macro_rules! call {
    ($lib:expr, $f:ident ( $($arg:expr),* $(,)? )) => {
        match $lib.functions.$f {
            Some(f) => f($($arg),*),
            None => ck::CKR_FUNCTION_NOT_SUPPORTED,
        }
    };
}

fn check(rv: ck::CK_RV) -> Result<()> {
    if rv == ck::CKR_OK {
        Ok(())
    } else {
        Err(Error::Backend(rv))
    }
}

fn version(v: ck::CK_VERSION) -> Version {
    Version {
        major: v.major,
        minor: v.minor,
    }
}

/// A blank-padded fixed-size C string, unpadded.
fn unpad(b: &[u8]) -> String {
    let end = b
        .iter()
        .rposition(|&c| c != b' ' && c != 0)
        .map_or(0, |i| i + 1);
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// A loaded, initialised backend library. Finalised when dropped (after
/// every token and session using it is gone, since they hold an `Arc`).
pub struct Library {
    path: PathBuf,
    functions: ck::CK_FUNCTION_LIST,
    finalized: AtomicBool,
    // Keeps the shared object mapped while `functions` points into it;
    // declared last so it is dropped last.
    _loaded: ck::Pkcs11,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library").field("path", &self.path).finish()
    }
}

impl Library {
    /// Loads `path`, fetches its function list and calls `C_Initialize`
    /// with `CKF_OS_LOCKING_OK` (`CKR_CRYPTOKI_ALREADY_INITIALIZED` is fine).
    pub fn load(path: &Path) -> std::result::Result<Arc<Library>, String> {
        // SAFETY: loading a shared object runs its initialisers; the path is
        // the administrator's configured PKCS#11 library, which is exactly the
        // code this agent exists to run.
        let loaded = unsafe { ck::Pkcs11::new(path) }
            .map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        let get_list = loaded
            .C_GetFunctionList
            .as_ref()
            .map_err(|e| format!("{}: no C_GetFunctionList: {e}", path.display()))?;
        let mut list: *mut ck::CK_FUNCTION_LIST = ptr::null_mut();
        // SAFETY: `get_list` is the library's C_GetFunctionList; it writes one
        // pointer into `list`, a valid local.
        let rv = unsafe { get_list(&mut list) };
        if rv != ck::CKR_OK || list.is_null() {
            return Err(format!(
                "{}: C_GetFunctionList failed ({})",
                path.display(),
                crate::error::rv_text(rv)
            ));
        }
        // SAFETY: the library returned a non-NULL pointer to its function
        // list, which lives as long as the library stays loaded; we copy it
        // (plain function pointers) and keep the library loaded in `_loaded`.
        let functions = unsafe { *list };
        let lib = Library {
            path: path.to_owned(),
            functions,
            finalized: AtomicBool::new(false),
            _loaded: loaded,
        };
        let mut args = ck::CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags: ck::CKF_OS_LOCKING_OK,
            pReserved: ptr::null_mut(),
        };
        // SAFETY: `args` is a valid CK_C_INITIALIZE_ARGS alive for the call.
        let rv = unsafe { call!(lib, C_Initialize(ptr::from_mut(&mut args).cast::<c_void>())) };
        match rv {
            ck::CKR_OK | ck::CKR_CRYPTOKI_ALREADY_INITIALIZED => Ok(Arc::new(lib)),
            rv => {
                // Not initialised by us: nothing to finalise.
                lib.finalized.store(true, Ordering::SeqCst);
                Err(format!(
                    "{}: C_Initialize failed ({})",
                    path.display(),
                    crate::error::rv_text(rv)
                ))
            }
        }
    }

    /// The path it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `C_GetInfo`.
    pub fn info(&self) -> Result<LibraryInfo> {
        let mut info = ck::CK_INFO::default();
        // SAFETY: `info` is a valid CK_INFO the library fills.
        check(unsafe { call!(self, C_GetInfo(&mut info)) })?;
        Ok(LibraryInfo {
            manufacturer: unpad(&info.manufacturerID),
            description: unpad(&info.libraryDescription),
            version: version(info.libraryVersion),
            cryptoki_version: version(info.cryptokiVersion),
        })
    }

    fn token_info(&self, slot: ck::CK_SLOT_ID) -> Result<ck::CK_TOKEN_INFO> {
        let mut info = ck::CK_TOKEN_INFO::default();
        // SAFETY: `info` is a valid CK_TOKEN_INFO the library fills.
        check(unsafe { call!(self, C_GetTokenInfo(slot, &mut info)) })?;
        Ok(info)
    }

    /// The slot holding the backend token `selector` names.
    pub fn find_slot(
        &self,
        selector: &BackendSelector,
    ) -> std::result::Result<ck::CK_SLOT_ID, String> {
        let mut n: ck::CK_ULONG = 0;
        // SAFETY: a NULL list asks for the count, written into `n`.
        check(unsafe { call!(self, C_GetSlotList(ck::CK_TRUE, ptr::null_mut(), &mut n)) })
            .map_err(|e| format!("C_GetSlotList failed: {e}"))?;
        let mut slots: Vec<ck::CK_SLOT_ID> = vec![0; n as usize];
        // SAFETY: `slots` has room for `n` ids; the library writes at most `n`
        // and updates `n`.
        check(unsafe { call!(self, C_GetSlotList(ck::CK_TRUE, slots.as_mut_ptr(), &mut n)) })
            .map_err(|e| format!("C_GetSlotList failed: {e}"))?;
        slots.truncate(n as usize);
        for slot in slots {
            let Ok(info) = self.token_info(slot) else {
                continue;
            };
            let found = match selector {
                BackendSelector::Label(l) => unpad(&info.label) == *l,
                BackendSelector::Serial(s) => unpad(&info.serialNumber) == *s,
            };
            if found {
                return Ok(slot);
            }
        }
        Err(match selector {
            BackendSelector::Label(l) => format!("no token labelled {l:?}"),
            BackendSelector::Serial(s) => format!("no token with serial {s:?}"),
        })
    }

    /// `C_Finalize`, once.
    pub fn finalize(&self) {
        if !self.finalized.swap(true, Ordering::SeqCst) {
            // SAFETY: C_Finalize takes a reserved NULL pointer.
            let rv = unsafe { call!(self, C_Finalize(ptr::null_mut())) };
            if rv != ck::CKR_OK {
                log::warn!(
                    "{}: C_Finalize returned {}",
                    self.path.display(),
                    crate::error::rv_text(rv)
                );
            }
        }
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        self.finalize();
    }
}

/// One backend token: the library, its slot, and the anchor session logged
/// in with the backend PIN.
pub struct Token {
    lib: Arc<Library>,
    slot: ck::CK_SLOT_ID,
    anchor: ck::CK_SESSION_HANDLE,
    pin: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the PIN.
        f.debug_struct("Token")
            .field("library", &self.lib.path)
            .field("slot", &self.slot)
            .field("anchor", &self.anchor)
            .finish()
    }
}

impl Token {
    /// Finds the token, opens the anchor session and logs it in as
    /// `CKU_USER` (`CKR_USER_ALREADY_LOGGED_IN` is fine).
    pub fn open(
        lib: Arc<Library>,
        selector: &BackendSelector,
        pin: Zeroizing<Vec<u8>>,
    ) -> std::result::Result<Token, String> {
        Token::open_as(lib, selector, pin, ck::CKU_USER)
    }

    /// [`Token::open`] as `user` (`CKU_SO` for the security officer's
    /// short-lived sessions of [`crate::lifecycle::officer`]).
    pub fn open_as(
        lib: Arc<Library>,
        selector: &BackendSelector,
        pin: Zeroizing<Vec<u8>>,
        user: ck::CK_USER_TYPE,
    ) -> std::result::Result<Token, String> {
        let slot = lib.find_slot(selector)?;
        let mut anchor: ck::CK_SESSION_HANDLE = 0;
        // SAFETY: `anchor` is a valid out-parameter; no notify callback.
        let rv = unsafe {
            call!(
                lib,
                C_OpenSession(
                    slot,
                    ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION,
                    ptr::null_mut(),
                    None,
                    &mut anchor
                )
            )
        };
        check(rv).map_err(|e| format!("C_OpenSession failed: {e}"))?;
        let token = Token {
            lib,
            slot,
            anchor,
            pin,
        };
        match token.login(BackendSession(anchor), user) {
            Ok(()) => Ok(token),
            Err(Error::Backend(rv)) if rv == ck::CKR_USER_ALREADY_LOGGED_IN => Ok(token),
            Err(e) if user == ck::CKU_SO => {
                Err(format!("C_Login with the backend SO PIN failed: {e}"))
            }
            Err(e) => Err(format!("C_Login with the backend PIN failed: {e}")),
        }
    }

    /// `C_Logout` (the officer's child, before it exits).
    pub fn logout(&self, session: BackendSession) -> Result<()> {
        // SAFETY: no pointers.
        check(unsafe { call!(self.lib, C_Logout(session.0)) })
    }

    fn login(&self, session: BackendSession, user: ck::CK_USER_TYPE) -> Result<()> {
        let mut pin = Zeroizing::new(self.pin.to_vec());
        // SAFETY: `pin` holds `pin.len()` bytes, alive for the call.
        check(unsafe {
            call!(
                self.lib,
                C_Login(session.0, user, pin.as_mut_ptr(), pin.len() as ck::CK_ULONG)
            )
        })
    }

    /// Calls `f(buffer, &mut len)` with a buffer of `estimate` bytes and, on
    /// `CKR_BUFFER_TOO_SMALL`, once more with the length the backend asked
    /// for: the common case is one backend call.
    fn output(
        &self,
        estimate: usize,
        mut f: impl FnMut(*mut u8, &mut ck::CK_ULONG) -> ck::CK_RV,
    ) -> Result<Vec<u8>> {
        let mut out = vec![0u8; estimate];
        let mut len = estimate as ck::CK_ULONG;
        let mut rv = f(out.as_mut_ptr(), &mut len);
        if rv == ck::CKR_BUFFER_TOO_SMALL {
            let need = len as usize;
            if need <= estimate || need > MAX_OUTPUT {
                return Err(Error::Backend(rv as u64));
            }
            out.resize(need, 0);
            len = need as ck::CK_ULONG;
            rv = f(out.as_mut_ptr(), &mut len);
        }
        check(rv)?;
        out.truncate(len as usize);
        Ok(out)
    }

    fn new_object(
        &self,
        f: impl FnOnce(&mut ck::CK_OBJECT_HANDLE) -> ck::CK_RV,
    ) -> Result<BackendObject> {
        let mut h: ck::CK_OBJECT_HANDLE = 0;
        check(f(&mut h))?;
        Ok(BackendObject(h))
    }

    /// The nested attributes of a template-valued attribute whose array
    /// length is `len` bytes: one call for the lengths, one for the values.
    fn get_template(
        &self,
        session: BackendSession,
        object: BackendObject,
        attr_type: u64,
        len: usize,
    ) -> Result<AttrResult> {
        let n = len / size_of::<ck::CK_ATTRIBUTE>();
        let mut inner = vec![
            ck::CK_ATTRIBUTE {
                type_: 0,
                pValue: ptr::null_mut(),
                ulValueLen: 0,
            };
            n
        ];
        let mut outer = ck::CK_ATTRIBUTE {
            type_: attr_type as ck::CK_ATTRIBUTE_TYPE,
            pValue: inner.as_mut_ptr().cast(),
            ulValueLen: (n * size_of::<ck::CK_ATTRIBUTE>()) as ck::CK_ULONG,
        };
        // SAFETY: `outer` points to `inner`, `n` CK_ATTRIBUTEs with NULL
        // values: the library fills their types and lengths.
        check(unsafe {
            call!(
                self.lib,
                C_GetAttributeValue(session.0, object.0, &mut outer, 1)
            )
        })?;
        let mut bufs: Vec<Words> = Vec::with_capacity(n);
        for a in inner.iter_mut() {
            if a.ulValueLen == ck::CK_UNAVAILABLE_INFORMATION || a.ulValueLen as usize > MAX_OUTPUT
            {
                return Ok(AttrResult::Sensitive);
            }
            let mut w = Words::zeroed(a.ulValueLen as usize);
            a.pValue = w.as_mut_ptr();
            bufs.push(w);
        }
        // SAFETY: each inner attribute points to a buffer of its announced
        // length (`bufs`), alive for the call.
        check(unsafe {
            call!(
                self.lib,
                C_GetAttributeValue(session.0, object.0, &mut outer, 1)
            )
        })?;
        let values = inner
            .iter()
            .zip(&bufs)
            .map(|(a, w)| {
                let t = a.type_;
                (t, value_from_bytes(t, w.to_bytes(a.ulValueLen as usize)))
            })
            .collect();
        Ok(AttrResult::Value(AttrValue::Template(values)))
    }

    fn init_fn(&self, op: Op) -> ck::CK_C_EncryptInit {
        let f = &self.lib.functions;
        match op {
            Op::Encrypt => f.C_EncryptInit,
            Op::Decrypt => f.C_DecryptInit,
            Op::Sign => f.C_SignInit,
            Op::Verify => f.C_VerifyInit,
            Op::SignRecover => f.C_SignRecoverInit,
            Op::VerifyRecover => f.C_VerifyRecoverInit,
            Op::Digest => None, // C_DigestInit has no key argument
        }
    }

    fn single_fn(&self, op: Op) -> ck::CK_C_Encrypt {
        let f = &self.lib.functions;
        match op {
            Op::Encrypt => f.C_Encrypt,
            Op::Decrypt => f.C_Decrypt,
            Op::Digest => f.C_Digest,
            Op::Sign => f.C_Sign,
            Op::SignRecover => f.C_SignRecover,
            Op::VerifyRecover => f.C_VerifyRecover,
            Op::Verify => None, // C_Verify takes a signature: `verify`
        }
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        // SAFETY: closing our own anchor session; no pointers.
        let _ = unsafe { call!(self.lib, C_CloseSession(self.anchor)) };
    }
}

/// Output estimate for a single-part call: one call in the common case.
fn single_estimate(op: Op, input: usize) -> usize {
    match op {
        Op::Sign | Op::SignRecover => 1024,
        Op::Digest => 128,
        Op::Encrypt => input + 1024,
        Op::Decrypt | Op::VerifyRecover | Op::Verify => input + 64,
    }
}

impl Backend for Token {
    fn library_info(&self) -> Result<LibraryInfo> {
        self.lib.info()
    }

    fn token_info(&self) -> Result<BackendTokenInfo> {
        let i = self.lib.token_info(self.slot)?;
        Ok(BackendTokenInfo {
            label: unpad(&i.label),
            manufacturer: unpad(&i.manufacturerID),
            model: unpad(&i.model),
            serial: unpad(&i.serialNumber),
            flags: i.flags,
            hardware_version: version(i.hardwareVersion),
            firmware_version: version(i.firmwareVersion),
            utc_time: if i.flags & ck::CKF_CLOCK_ON_TOKEN != 0 {
                String::from_utf8_lossy(&i.utcTime).into_owned()
            } else {
                String::new()
            },
        })
    }

    fn mechanism_list(&self) -> Result<Vec<u64>> {
        let mut n: ck::CK_ULONG = 0;
        // SAFETY: a NULL list asks for the count, written into `n`.
        check(unsafe {
            call!(
                self.lib,
                C_GetMechanismList(self.slot, ptr::null_mut(), &mut n)
            )
        })?;
        let mut list: Vec<ck::CK_MECHANISM_TYPE> = vec![0; n as usize];
        // SAFETY: `list` has room for `n` entries; the library updates `n`.
        check(unsafe {
            call!(
                self.lib,
                C_GetMechanismList(self.slot, list.as_mut_ptr(), &mut n)
            )
        })?;
        list.truncate(n as usize);
        Ok(list.into_iter().collect())
    }

    fn mechanism_info(&self, mechanism: u64) -> Result<MechanismInfo> {
        let mut info = ck::CK_MECHANISM_INFO::default();
        // SAFETY: `info` is a valid CK_MECHANISM_INFO the library fills.
        check(unsafe {
            call!(
                self.lib,
                C_GetMechanismInfo(self.slot, mechanism as ck::CK_MECHANISM_TYPE, &mut info)
            )
        })?;
        Ok(MechanismInfo {
            min_key_size: info.ulMinKeySize,
            max_key_size: info.ulMaxKeySize,
            flags: info.flags,
        })
    }

    fn open_session(&self, rw: bool) -> Result<BackendSession> {
        let flags = ck::CKF_SERIAL_SESSION | if rw { ck::CKF_RW_SESSION } else { 0 };
        let mut h: ck::CK_SESSION_HANDLE = 0;
        // SAFETY: `h` is a valid out-parameter; no notify callback.
        check(unsafe {
            call!(
                self.lib,
                C_OpenSession(self.slot, flags, ptr::null_mut(), None, &mut h)
            )
        })?;
        Ok(BackendSession(h))
    }

    fn close_session(&self, session: BackendSession) -> Result<()> {
        // SAFETY: no pointers.
        check(unsafe { call!(self.lib, C_CloseSession(session.0)) })
    }

    fn anchor_session(&self) -> BackendSession {
        BackendSession(self.anchor)
    }

    fn login_context_specific(&self, session: BackendSession) -> Result<()> {
        self.login(session, ck::CKU_CONTEXT_SPECIFIC)
    }

    fn create_object(
        &self,
        session: BackendSession,
        template: &[Attribute],
    ) -> Result<BackendObject> {
        let mut t = CTemplate::new(template);
        self.new_object(|h| {
            // SAFETY: `t` owns the attribute array and its values for the call.
            unsafe {
                call!(
                    self.lib,
                    C_CreateObject(session.0, t.as_mut_ptr(), t.count(), h)
                )
            }
        })
    }

    fn copy_object(
        &self,
        session: BackendSession,
        object: BackendObject,
        template: &[Attribute],
    ) -> Result<BackendObject> {
        let mut t = CTemplate::new(template);
        self.new_object(|h| {
            // SAFETY: `t` owns the attribute array and its values for the call.
            unsafe {
                call!(
                    self.lib,
                    C_CopyObject(session.0, object.0, t.as_mut_ptr(), t.count(), h)
                )
            }
        })
    }

    fn destroy_object(&self, session: BackendSession, object: BackendObject) -> Result<()> {
        // SAFETY: no pointers.
        check(unsafe { call!(self.lib, C_DestroyObject(session.0, object.0)) })
    }

    fn object_size(&self, session: BackendSession, object: BackendObject) -> Result<u64> {
        let mut size: ck::CK_ULONG = 0;
        // SAFETY: `size` is a valid out-parameter.
        check(unsafe { call!(self.lib, C_GetObjectSize(session.0, object.0, &mut size)) })?;
        Ok(size as u64)
    }

    fn get_attributes(
        &self,
        session: BackendSession,
        object: BackendObject,
        types: &[u64],
    ) -> Result<Vec<AttrResult>> {
        let mut attrs: Vec<ck::CK_ATTRIBUTE> = types
            .iter()
            .map(|&t| ck::CK_ATTRIBUTE {
                type_: t as ck::CK_ATTRIBUTE_TYPE,
                pValue: ptr::null_mut(),
                ulValueLen: 0,
            })
            .collect();
        // Pass 1: lengths (NULL values).
        // SAFETY: `attrs` holds `attrs.len()` attributes with NULL values;
        // the library writes only their lengths.
        let rv = unsafe {
            call!(
                self.lib,
                C_GetAttributeValue(session.0, object.0, attrs.as_mut_ptr(), attrs.len() as _)
            )
        };
        if !matches!(
            rv,
            ck::CKR_OK | ck::CKR_ATTRIBUTE_SENSITIVE | ck::CKR_ATTRIBUTE_TYPE_INVALID
        ) {
            return Err(Error::Backend(rv));
        }
        let mut results: Vec<Option<AttrResult>> = vec![None; types.len()];
        let unavailable: Vec<usize> = (0..attrs.len())
            .filter(|&i| attrs[i].ulValueLen == ck::CK_UNAVAILABLE_INFORMATION)
            .collect();
        // Which of sensitive / invalid: the call's code says so when only one
        // attribute is unavailable; otherwise ask for each alone.
        for &i in &unavailable {
            let rv_i = if unavailable.len() == 1 {
                rv
            } else {
                let mut one = ck::CK_ATTRIBUTE {
                    type_: attrs[i].type_,
                    pValue: ptr::null_mut(),
                    ulValueLen: 0,
                };
                // SAFETY: one attribute with a NULL value.
                unsafe {
                    call!(
                        self.lib,
                        C_GetAttributeValue(session.0, object.0, &mut one, 1)
                    )
                }
            };
            results[i] = Some(if rv_i == ck::CKR_ATTRIBUTE_SENSITIVE {
                AttrResult::Sensitive
            } else {
                AttrResult::Invalid
            });
        }
        // Pass 2: values of the available leaf attributes, in one call.
        let mut leaf_idx = Vec::new();
        let mut leaves = Vec::new();
        let mut bufs = Vec::new();
        let mut templates = Vec::new();
        for (i, a) in attrs.iter().enumerate() {
            if results[i].is_some() {
                continue;
            }
            let len = a.ulValueLen as usize;
            if len > MAX_OUTPUT {
                return Err(Error::Backend(ck::CKR_DEVICE_MEMORY));
            }
            if kind_of(types[i]) == AttrKind::Template {
                templates.push((i, len));
                continue;
            }
            let mut w = Words::zeroed(len);
            leaves.push(ck::CK_ATTRIBUTE {
                type_: a.type_,
                pValue: w.as_mut_ptr(),
                ulValueLen: a.ulValueLen,
            });
            bufs.push(w);
            leaf_idx.push(i);
        }
        if !leaves.is_empty() {
            // SAFETY: each attribute points to a buffer (`bufs`) of exactly
            // its announced length, alive for the call.
            check(unsafe {
                call!(
                    self.lib,
                    C_GetAttributeValue(
                        session.0,
                        object.0,
                        leaves.as_mut_ptr(),
                        leaves.len() as _
                    )
                )
            })?;
            for ((a, w), &i) in leaves.iter().zip(&bufs).zip(&leaf_idx) {
                let v = value_from_bytes(types[i], w.to_bytes(a.ulValueLen as usize));
                results[i] = Some(AttrResult::Value(AttrValue::Leaf(v)));
            }
        }
        for (i, len) in templates {
            results[i] = Some(self.get_template(session, object, types[i], len)?);
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or(AttrResult::Invalid))
            .collect())
    }

    fn set_attributes(
        &self,
        session: BackendSession,
        object: BackendObject,
        template: &[Attribute],
    ) -> Result<()> {
        let mut t = CTemplate::new(template);
        // SAFETY: `t` owns the attribute array and its values for the call.
        check(unsafe {
            call!(
                self.lib,
                C_SetAttributeValue(session.0, object.0, t.as_mut_ptr(), t.count())
            )
        })
    }

    fn find_objects(
        &self,
        session: BackendSession,
        template: &[Attribute],
    ) -> Result<Vec<BackendObject>> {
        let mut t = CTemplate::new(template);
        // SAFETY: `t` owns the attribute array and its values for the call.
        check(unsafe {
            call!(
                self.lib,
                C_FindObjectsInit(session.0, t.as_mut_ptr(), t.count())
            )
        })?;
        let mut found = Vec::new();
        let mut batch: Vec<ck::CK_OBJECT_HANDLE> = vec![0; FIND_BATCH];
        let result = loop {
            let mut n: ck::CK_ULONG = 0;
            // SAFETY: `batch` has room for FIND_BATCH handles; `n` receives
            // how many were written.
            let rv = unsafe {
                call!(
                    self.lib,
                    C_FindObjects(session.0, batch.as_mut_ptr(), FIND_BATCH as _, &mut n)
                )
            };
            if let Err(e) = check(rv) {
                break Err(e);
            }
            let n = (n as usize).min(FIND_BATCH);
            found.extend(batch[..n].iter().map(|&h| BackendObject(h)));
            if n < FIND_BATCH {
                break Ok(found);
            }
        };
        // SAFETY: no pointers; always end the search, even after an error.
        let rv = unsafe { call!(self.lib, C_FindObjectsFinal(session.0)) };
        let found = result?;
        check(rv)?;
        Ok(found)
    }

    fn op_init(
        &self,
        session: BackendSession,
        op: Op,
        mechanism: &Mechanism,
        key: Option<BackendObject>,
    ) -> Result<()> {
        let mut m = CMechanism::new(mechanism)?;
        let mut raw = m.raw();
        if op == Op::Digest {
            // SAFETY: `raw` and the parameter it points to (`m`) are alive
            // for the call.
            return check(unsafe { call!(self.lib, C_DigestInit(session.0, &mut raw)) });
        }
        let Some(key) = key else {
            return Err(Error::KeyHandleInvalid);
        };
        let rv = match self.init_fn(op) {
            // SAFETY: as above: `raw` and `m` outlive the call.
            Some(f) => unsafe { f(session.0, &mut raw, key.0) },
            None => ck::CKR_FUNCTION_NOT_SUPPORTED,
        };
        check(rv)
    }

    fn single(&self, session: BackendSession, op: Op, data: &[u8]) -> Result<Vec<u8>> {
        let Some(f) = self.single_fn(op) else {
            return Err(Error::Backend(ck::CKR_FUNCTION_NOT_SUPPORTED));
        };
        self.output(single_estimate(op, data.len()), |out, len| {
            // SAFETY: `data` is read-only input of its length (the C
            // prototype is not const-correct); `out` has room for `*len`.
            unsafe {
                f(
                    session.0,
                    data.as_ptr().cast_mut(),
                    data.len() as _,
                    out,
                    len,
                )
            }
        })
    }

    fn verify(&self, session: BackendSession, data: &[u8], signature: &[u8]) -> Result<()> {
        // SAFETY: both inputs are read-only buffers of their lengths.
        check(unsafe {
            call!(
                self.lib,
                C_Verify(
                    session.0,
                    data.as_ptr().cast_mut(),
                    data.len() as _,
                    signature.as_ptr().cast_mut(),
                    signature.len() as _
                )
            )
        })
    }

    fn update(&self, session: BackendSession, op: Op, data: &[u8]) -> Result<Vec<u8>> {
        let f = &self.lib.functions;
        let input = data.as_ptr().cast_mut();
        let n = data.len() as ck::CK_ULONG;
        let no_output = match op {
            Op::Encrypt | Op::Decrypt => {
                let g = if op == Op::Encrypt {
                    f.C_EncryptUpdate
                } else {
                    f.C_DecryptUpdate
                };
                let Some(g) = g else {
                    return Err(Error::Backend(ck::CKR_FUNCTION_NOT_SUPPORTED));
                };
                return self.output(data.len() + 64, |out, len| {
                    // SAFETY: `data` is read-only input of its length; `out`
                    // has room for `*len` bytes.
                    unsafe { g(session.0, input, n, out, len) }
                });
            }
            Op::Digest => f.C_DigestUpdate,
            Op::Sign => f.C_SignUpdate,
            Op::Verify => f.C_VerifyUpdate,
            Op::SignRecover | Op::VerifyRecover => None,
        };
        let rv = match no_output {
            // SAFETY: `data` is read-only input of its length.
            Some(g) => unsafe { g(session.0, input, n) },
            None => ck::CKR_FUNCTION_NOT_SUPPORTED,
        };
        check(rv)?;
        Ok(Vec::new())
    }

    fn digest_key(&self, session: BackendSession, key: BackendObject) -> Result<()> {
        // SAFETY: no pointers.
        check(unsafe { call!(self.lib, C_DigestKey(session.0, key.0)) })
    }

    fn final_(&self, session: BackendSession, op: Op) -> Result<Vec<u8>> {
        let f = &self.lib.functions;
        let g = match op {
            Op::Encrypt => f.C_EncryptFinal,
            Op::Decrypt => f.C_DecryptFinal,
            Op::Digest => f.C_DigestFinal,
            Op::Sign => f.C_SignFinal,
            Op::Verify | Op::SignRecover | Op::VerifyRecover => None,
        };
        let Some(g) = g else {
            return Err(Error::Backend(ck::CKR_FUNCTION_NOT_SUPPORTED));
        };
        self.output(1024, |out, len| {
            // SAFETY: `out` has room for `*len` bytes.
            unsafe { g(session.0, out, len) }
        })
    }

    fn verify_final(&self, session: BackendSession, signature: &[u8]) -> Result<()> {
        // SAFETY: `signature` is read-only input of its length.
        check(unsafe {
            call!(
                self.lib,
                C_VerifyFinal(
                    session.0,
                    signature.as_ptr().cast_mut(),
                    signature.len() as _
                )
            )
        })
    }

    fn generate_key(
        &self,
        session: BackendSession,
        mechanism: &Mechanism,
        template: &[Attribute],
    ) -> Result<BackendObject> {
        let mut m = CMechanism::new(mechanism)?;
        let mut raw = m.raw();
        let mut t = CTemplate::new(template);
        self.new_object(|h| {
            // SAFETY: `raw`/`m` and `t` own everything they point to and
            // outlive the call.
            unsafe {
                call!(
                    self.lib,
                    C_GenerateKey(session.0, &mut raw, t.as_mut_ptr(), t.count(), h)
                )
            }
        })
    }

    fn generate_key_pair(
        &self,
        session: BackendSession,
        mechanism: &Mechanism,
        public_template: &[Attribute],
        private_template: &[Attribute],
    ) -> Result<(BackendObject, BackendObject)> {
        let mut m = CMechanism::new(mechanism)?;
        let mut raw = m.raw();
        let mut pubt = CTemplate::new(public_template);
        let mut privt = CTemplate::new(private_template);
        let (mut hpub, mut hpriv): (ck::CK_OBJECT_HANDLE, ck::CK_OBJECT_HANDLE) = (0, 0);
        // SAFETY: `raw`/`m`, `pubt` and `privt` own everything they point to
        // and outlive the call; the handles are valid out-parameters.
        check(unsafe {
            call!(
                self.lib,
                C_GenerateKeyPair(
                    session.0,
                    &mut raw,
                    pubt.as_mut_ptr(),
                    pubt.count(),
                    privt.as_mut_ptr(),
                    privt.count(),
                    &mut hpub,
                    &mut hpriv
                )
            )
        })?;
        Ok((BackendObject(hpub), BackendObject(hpriv)))
    }

    fn wrap_key(
        &self,
        session: BackendSession,
        mechanism: &Mechanism,
        wrapping_key: BackendObject,
        key: BackendObject,
    ) -> Result<Vec<u8>> {
        let mut m = CMechanism::new(mechanism)?;
        let mut raw = m.raw();
        self.output(4096, |out, len| {
            // SAFETY: `raw`/`m` outlive the call; `out` has room for `*len`.
            unsafe {
                call!(
                    self.lib,
                    C_WrapKey(session.0, &mut raw, wrapping_key.0, key.0, out, len)
                )
            }
        })
    }

    fn unwrap_key(
        &self,
        session: BackendSession,
        mechanism: &Mechanism,
        unwrapping_key: BackendObject,
        wrapped: &[u8],
        template: &[Attribute],
    ) -> Result<BackendObject> {
        let mut m = CMechanism::new(mechanism)?;
        let mut raw = m.raw();
        let mut t = CTemplate::new(template);
        self.new_object(|h| {
            // SAFETY: `raw`/`m` and `t` outlive the call; `wrapped` is
            // read-only input of its length.
            unsafe {
                call!(
                    self.lib,
                    C_UnwrapKey(
                        session.0,
                        &mut raw,
                        unwrapping_key.0,
                        wrapped.as_ptr().cast_mut(),
                        wrapped.len() as _,
                        t.as_mut_ptr(),
                        t.count(),
                        h
                    )
                )
            }
        })
    }

    fn derive_key(
        &self,
        session: BackendSession,
        mechanism: &Mechanism,
        base_key: BackendObject,
        template: &[Attribute],
    ) -> Result<BackendObject> {
        let mut m = CMechanism::new(mechanism)?;
        let mut raw = m.raw();
        let mut t = CTemplate::new(template);
        self.new_object(|h| {
            // SAFETY: `raw`/`m` and `t` own everything they point to and
            // outlive the call.
            unsafe {
                call!(
                    self.lib,
                    C_DeriveKey(
                        session.0,
                        &mut raw,
                        base_key.0,
                        t.as_mut_ptr(),
                        t.count(),
                        h
                    )
                )
            }
        })
    }

    fn seed_random(&self, session: BackendSession, seed: &[u8]) -> Result<()> {
        // SAFETY: `seed` is read-only input of its length.
        check(unsafe {
            call!(
                self.lib,
                C_SeedRandom(session.0, seed.as_ptr().cast_mut(), seed.len() as _)
            )
        })
    }

    fn generate_random(&self, session: BackendSession, len: usize) -> Result<Vec<u8>> {
        let mut out = vec![0u8; len];
        // SAFETY: `out` has room for `len` bytes.
        check(unsafe {
            call!(
                self.lib,
                C_GenerateRandom(session.0, out.as_mut_ptr(), len as _)
            )
        })?;
        Ok(out)
    }
}
