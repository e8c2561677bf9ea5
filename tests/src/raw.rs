//! Direct calls into a PKCS#11 module through its `CK_FUNCTION_LIST`, for the
//! cases the `cryptoki` crate cannot express: NULL pointers, short buffers,
//! bad `C_Initialize` arguments, template-valued attributes, functions that
//! `cryptoki` does not wrap (`C_GetObjectSize`, `C_SignRecover`, ...) and raw
//! handles that belong to another process.
//!
//! All of the suite's `unsafe` code lives in this file. Every wrapper owns the
//! memory it hands to the module for the duration of the call, so the
//! wrappers are safe to call: the worst a wrong module can do is answer a
//! wrong `CK_RV`, which is what the tests look at.

use std::ffi::c_void;
use std::ptr;

use cryptoki_sys::*;

/// Name of a return value, for assertion messages (`CKR_PIN_INCORRECT`).
pub fn rv_name(rv: CK_RV) -> String {
    keyward_policy::rv_name(rv).map_or_else(|| format!("CKR_0x{rv:08X}"), str::to_owned)
}

/// Asserts that a raw return value is the expected one, naming both.
#[macro_export]
macro_rules! assert_rv {
    ($rv:expr, $expected:expr) => {{
        let rv: ::cryptoki_sys::CK_RV = $rv;
        let expected: ::cryptoki_sys::CK_RV = $expected;
        assert!(
            rv == expected,
            "{}: got {}, expected {}",
            stringify!($rv),
            $crate::raw::rv_name(rv),
            $crate::raw::rv_name(expected)
        );
    }};
    ($rv:expr, $expected:expr, $($ctx:tt)+) => {{
        let rv: ::cryptoki_sys::CK_RV = $rv;
        let expected: ::cryptoki_sys::CK_RV = $expected;
        assert!(
            rv == expected,
            "{} ({}): got {}, expected {}",
            stringify!($rv),
            format!($($ctx)+),
            $crate::raw::rv_name(rv),
            $crate::raw::rv_name(expected)
        );
    }};
}

/// A `cryptoki` object handle for a raw handle number of this process.
pub fn object_handle(h: CK_OBJECT_HANDLE) -> cryptoki::object::ObjectHandle {
    // SAFETY: `new_from_raw` is unsafe only because any number can be
    // passed; a wrong number is answered by the module with
    // CKR_OBJECT_HANDLE_INVALID, which is what tests look at.
    unsafe { cryptoki::object::ObjectHandle::new_from_raw(h) }
}

/// How a test wants `C_Initialize` to be called.
#[derive(Debug, Clone, Copy)]
pub enum InitArgs {
    /// `C_Initialize(NULL)`.
    Null,
    /// Arguments without mutex functions and these flags.
    Flags(CK_FLAGS),
    /// `pReserved` non-NULL (with `CKF_OS_LOCKING_OK`).
    Reserved,
    /// Only `CreateMutex` and `DestroyMutex` set (the spec wants all or none).
    PartialMutex,
    /// All four mutex functions set, with these flags.
    AllMutex(CK_FLAGS),
}

/// Where an output goes: a NULL pointer (size query) or a buffer of this
/// many bytes / elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    Null,
    Cap(usize),
}

/// What an output call answered: the return value, the length the module
/// wrote to the length argument, and the bytes it wrote (truncated to that
/// length when the call succeeded with a buffer).
#[derive(Debug, Clone)]
pub struct Output<T> {
    pub rv: CK_RV,
    pub len: CK_ULONG,
    pub data: Vec<T>,
}

/// One attribute of a raw template. `Template` holds one nested level
/// (`CKA_WRAP_TEMPLATE`, `CKA_UNWRAP_TEMPLATE`, `CKA_DERIVE_TEMPLATE`).
#[derive(Debug, Clone)]
pub enum Attr {
    Bool(CK_ATTRIBUTE_TYPE, bool),
    Ulong(CK_ATTRIBUTE_TYPE, CK_ULONG),
    Bytes(CK_ATTRIBUTE_TYPE, Vec<u8>),
    Template(CK_ATTRIBUTE_TYPE, Vec<Attr>),
}

/// A template laid out as the C API wants it. The value storage is owned
/// here and outlives every pointer in `attrs`.
// The boxes keep each value at a fixed address while the vectors grow:
// `attrs` holds pointers to them.
#[allow(clippy::vec_box)]
struct CTemplate {
    attrs: Vec<CK_ATTRIBUTE>,
    _bools: Vec<Box<CK_BBOOL>>,
    _ulongs: Vec<Box<CK_ULONG>>,
    _bytes: Vec<Vec<u8>>,
    _nested: Vec<CTemplate>,
}

impl CTemplate {
    fn new(template: &[Attr]) -> CTemplate {
        let mut t = CTemplate {
            attrs: Vec::with_capacity(template.len()),
            _bools: Vec::new(),
            _ulongs: Vec::new(),
            _bytes: Vec::new(),
            _nested: Vec::new(),
        };
        for a in template {
            let (type_, p, len): (CK_ATTRIBUTE_TYPE, *mut c_void, usize) = match a {
                Attr::Bool(ty, v) => {
                    let mut b = Box::new(if *v { CK_TRUE } else { CK_FALSE });
                    let p = &mut *b as *mut CK_BBOOL as *mut c_void;
                    t._bools.push(b);
                    (*ty, p, std::mem::size_of::<CK_BBOOL>())
                }
                Attr::Ulong(ty, v) => {
                    let mut b = Box::new(*v);
                    let p = &mut *b as *mut CK_ULONG as *mut c_void;
                    t._ulongs.push(b);
                    (*ty, p, std::mem::size_of::<CK_ULONG>())
                }
                Attr::Bytes(ty, v) => {
                    let mut v = v.clone();
                    let p = if v.is_empty() {
                        ptr::null_mut()
                    } else {
                        v.as_mut_ptr() as *mut c_void
                    };
                    let len = v.len();
                    t._bytes.push(v);
                    (*ty, p, len)
                }
                Attr::Template(ty, inner) => {
                    let mut n = CTemplate::new(inner);
                    let p = n.attrs.as_mut_ptr() as *mut c_void;
                    let len = n.attrs.len() * std::mem::size_of::<CK_ATTRIBUTE>();
                    t._nested.push(n);
                    (*ty, p, len)
                }
            };
            t.attrs.push(CK_ATTRIBUTE {
                type_,
                pValue: p,
                ulValueLen: len as CK_ULONG,
            });
        }
        t
    }

    fn ptr(&mut self) -> *mut CK_ATTRIBUTE {
        if self.attrs.is_empty() {
            ptr::null_mut()
        } else {
            self.attrs.as_mut_ptr()
        }
    }

    fn len(&self) -> CK_ULONG {
        self.attrs.len() as CK_ULONG
    }
}

/// One entry of a `C_GetAttributeValue` request: the type, the buffer the
/// caller offers (`Out::Null` for a length query) and, after the call, the
/// length the module wrote and the bytes.
#[derive(Debug, Clone)]
pub struct AttrReq {
    pub type_: CK_ATTRIBUTE_TYPE,
    pub out: Out,
    pub len: CK_ULONG,
    pub value: Vec<u8>,
}

impl AttrReq {
    pub fn query(type_: CK_ATTRIBUTE_TYPE) -> AttrReq {
        AttrReq {
            type_,
            out: Out::Null,
            len: 0,
            value: Vec::new(),
        }
    }
    pub fn with_cap(type_: CK_ATTRIBUTE_TYPE, cap: usize) -> AttrReq {
        AttrReq {
            type_,
            out: Out::Cap(cap),
            len: 0,
            value: Vec::new(),
        }
    }
}

/// A nested template read back from a template-valued attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadAttr {
    pub type_: CK_ATTRIBUTE_TYPE,
    pub value: Vec<u8>,
}

/// A mechanism with a raw parameter.
#[derive(Debug, Clone)]
pub enum Param {
    /// `pParameter = NULL`, `ulParameterLen = 0`.
    None,
    /// `pParameter = NULL` with this (non-zero) length.
    NullWithLen(CK_ULONG),
    /// These bytes as the parameter.
    Bytes(Vec<u8>),
    /// A well-formed `CK_GCM_PARAMS` (IV, no AAD, 128-bit tag) whose
    /// `ulParameterLen` is this value instead of `sizeof(CK_GCM_PARAMS)`.
    GcmWithLen { iv: Vec<u8>, len: CK_ULONG },
    /// A `CK_ECDH1_DERIVE_PARAMS` with `CKD_NULL`, no shared data and this
    /// public value.
    Ecdh1 { public: Vec<u8> },
}

#[derive(Debug, Clone)]
pub struct Mech {
    pub type_: CK_MECHANISM_TYPE,
    pub param: Param,
}

impl Mech {
    pub fn plain(type_: CK_MECHANISM_TYPE) -> Mech {
        Mech {
            type_,
            param: Param::None,
        }
    }
}

/// Calls `f` with a `CK_MECHANISM` built from `m`; the parameter storage
/// lives until `f` returns.
fn with_mech<R>(m: &Mech, f: impl FnOnce(*mut CK_MECHANISM) -> R) -> R {
    let mut bytes;
    let mut iv;
    let mut gcm;
    let mut public;
    let mut ecdh;
    let (p, len): (*mut c_void, CK_ULONG) = match &m.param {
        Param::None => (ptr::null_mut(), 0),
        Param::NullWithLen(len) => (ptr::null_mut(), *len),
        Param::Bytes(b) => {
            bytes = b.clone();
            (bytes.as_mut_ptr() as *mut c_void, bytes.len() as CK_ULONG)
        }
        Param::GcmWithLen { iv: v, len } => {
            iv = v.clone();
            gcm = CK_GCM_PARAMS {
                pIv: iv.as_mut_ptr(),
                ulIvLen: iv.len() as CK_ULONG,
                ulIvBits: (iv.len() * 8) as CK_ULONG,
                pAAD: ptr::null_mut(),
                ulAADLen: 0,
                ulTagBits: 128,
            };
            (&mut gcm as *mut CK_GCM_PARAMS as *mut c_void, *len)
        }
        Param::Ecdh1 { public: p } => {
            public = p.clone();
            ecdh = CK_ECDH1_DERIVE_PARAMS {
                kdf: CKD_NULL,
                ulSharedDataLen: 0,
                pSharedData: ptr::null_mut(),
                ulPublicDataLen: public.len() as CK_ULONG,
                pPublicData: public.as_mut_ptr(),
            };
            (
                &mut ecdh as *mut CK_ECDH1_DERIVE_PARAMS as *mut c_void,
                std::mem::size_of::<CK_ECDH1_DERIVE_PARAMS>() as CK_ULONG,
            )
        }
    };
    let mut mech = CK_MECHANISM {
        mechanism: m.type_,
        pParameter: p,
        ulParameterLen: len,
    };
    f(&mut mech)
}

/// The module, loaded with `dlopen` (the same handle `cryptoki` gets when it
/// loads the same path, so both see one library state).
#[derive(Debug)]
pub struct Raw {
    lib: libloading::Library,
    fl: *const CK_FUNCTION_LIST,
}

// SAFETY: the function list is immutable data owned by the loaded library,
// which stays loaded as long as `lib` lives; the module declares itself
// thread-safe (CKF_OS_LOCKING_OK), so its functions may be called from any
// thread.
unsafe impl Send for Raw {}
// SAFETY: as above; `Raw` has no interior mutability of its own.
unsafe impl Sync for Raw {}

/// Calls one entry of the function list, failing the test if the module left
/// it NULL.
macro_rules! call {
    ($self:ident, $name:ident ( $($arg:expr),* $(,)? )) => {{
        let f = $self
            .list()
            .$name
            .unwrap_or_else(|| panic!("the module's function list has no {}", stringify!($name)));
        // SAFETY: every pointer argument is either NULL or points to memory
        // owned by the calling wrapper that stays valid for the call, with
        // the length the module is told; that is the contract of the
        // function per the PKCS#11 specification.
        unsafe { f($($arg),*) }
    }};
}

impl Raw {
    /// Loads the module at `path` and fetches its function list.
    pub fn load(path: &str) -> Raw {
        // SAFETY: loading a PKCS#11 module runs its initialisers; PKCS#11
        // modules are meant to be dlopen'ed by applications.
        let lib = unsafe { libloading::Library::new(path) }
            .unwrap_or_else(|e| panic!("cannot dlopen the PKCS#11 module {path}: {e}"));
        let mut fl: *mut CK_FUNCTION_LIST = ptr::null_mut();
        // SAFETY: the symbol has the C_GetFunctionList signature per PKCS#11.
        let rv = unsafe {
            let get: libloading::Symbol<
                '_,
                unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV,
            > = lib
                .get(b"C_GetFunctionList\0")
                .unwrap_or_else(|e| panic!("{path} exports no C_GetFunctionList: {e}"));
            get(&mut fl)
        };
        assert_rv!(rv, CKR_OK, "C_GetFunctionList of {path}");
        assert!(!fl.is_null(), "C_GetFunctionList returned a NULL list");
        Raw { lib, fl }
    }

    fn list(&self) -> &CK_FUNCTION_LIST {
        // SAFETY: `fl` was checked non-NULL at load and points to the
        // module's static function list, alive while `lib` is loaded.
        unsafe { &*self.fl }
    }

    /// The version in the 2.40 function list.
    pub fn list_version(&self) -> CK_VERSION {
        self.list().version
    }

    /// Names of the function-list entries the module left NULL.
    pub fn null_entries(&self) -> Vec<&'static str> {
        let l = self.list();
        let mut missing = Vec::new();
        macro_rules! check {
            ($($n:ident)*) => { $( if l.$n.is_none() { missing.push(stringify!($n)); } )* };
        }
        check!(C_Initialize C_Finalize C_GetInfo C_GetFunctionList C_GetSlotList C_GetSlotInfo
            C_GetTokenInfo C_GetMechanismList C_GetMechanismInfo C_InitToken C_InitPIN C_SetPIN
            C_OpenSession C_CloseSession C_CloseAllSessions C_GetSessionInfo C_GetOperationState
            C_SetOperationState C_Login C_Logout C_CreateObject C_CopyObject C_DestroyObject
            C_GetObjectSize C_GetAttributeValue C_SetAttributeValue C_FindObjectsInit C_FindObjects
            C_FindObjectsFinal C_EncryptInit C_Encrypt C_EncryptUpdate C_EncryptFinal C_DecryptInit
            C_Decrypt C_DecryptUpdate C_DecryptFinal C_DigestInit C_Digest C_DigestUpdate
            C_DigestKey C_DigestFinal C_SignInit C_Sign C_SignUpdate C_SignFinal C_SignRecoverInit
            C_SignRecover C_VerifyInit C_Verify C_VerifyUpdate C_VerifyFinal C_VerifyRecoverInit
            C_VerifyRecover C_DigestEncryptUpdate C_DecryptDigestUpdate C_SignEncryptUpdate
            C_DecryptVerifyUpdate C_GenerateKey C_GenerateKeyPair C_WrapKey C_UnwrapKey C_DeriveKey
            C_SeedRandom C_GenerateRandom C_GetFunctionStatus C_CancelFunction C_WaitForSlotEvent);
        missing
    }

    /// `C_GetFunctionList(NULL)` through the exported symbol.
    pub fn get_function_list_null(&self) -> CK_RV {
        // SAFETY: the symbol has the C_GetFunctionList signature; a NULL
        // argument is what is being tested and must be refused, not used.
        unsafe {
            let get: libloading::Symbol<
                '_,
                unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV,
            > = self
                .lib
                .get(b"C_GetFunctionList\0")
                .expect("C_GetFunctionList");
            get(ptr::null_mut())
        }
    }

    /// `C_GetInterfaceList`: first the count (NULL list), then the list.
    /// Returns the rv of each call and `(name, version, flags)` per interface.
    pub fn interface_list(&self) -> (CK_RV, CK_RV, Vec<(String, CK_VERSION, CK_FLAGS)>) {
        // SAFETY: symbol signature per PKCS#11 3.0; `count` and `list` are
        // owned here and `count` is the capacity of `list`. The returned
        // interface names and function lists are static data of the module.
        unsafe {
            let get: libloading::Symbol<
                '_,
                unsafe extern "C" fn(*mut CK_INTERFACE, *mut CK_ULONG) -> CK_RV,
            > = self
                .lib
                .get(b"C_GetInterfaceList\0")
                .expect("the module exports no C_GetInterfaceList");
            let mut count: CK_ULONG = 0;
            let rv1 = get(ptr::null_mut(), &mut count);
            if rv1 != CKR_OK {
                return (rv1, CKR_OK, Vec::new());
            }
            let mut list = vec![
                CK_INTERFACE {
                    pInterfaceName: ptr::null_mut(),
                    pFunctionList: ptr::null_mut(),
                    flags: 0,
                };
                count as usize
            ];
            let rv2 = get(list.as_mut_ptr(), &mut count);
            let out = list
                .iter()
                .take(count as usize)
                .map(|i| {
                    let name = if i.pInterfaceName.is_null() {
                        String::new()
                    } else {
                        std::ffi::CStr::from_ptr(i.pInterfaceName as *const std::ffi::c_char)
                            .to_string_lossy()
                            .into_owned()
                    };
                    let version = if i.pFunctionList.is_null() {
                        CK_VERSION { major: 0, minor: 0 }
                    } else {
                        (*(i.pFunctionList as *const CK_FUNCTION_LIST)).version
                    };
                    (name, version, i.flags)
                })
                .collect();
            (rv2, CKR_OK, out)
        }
    }

    /// `C_GetInterfaceList(NULL, NULL)` and, when `short` is set, a buffer
    /// of zero entries after the count is known. Returns (rv of NULL count,
    /// rv of the short buffer, count written by the short call).
    pub fn interface_list_bad(&self) -> (CK_RV, CK_RV, CK_ULONG) {
        // SAFETY: symbol signature per PKCS#11 3.0; NULL count is the case
        // under test; the short call gets a one-element buffer and count 0.
        unsafe {
            let get: libloading::Symbol<
                '_,
                unsafe extern "C" fn(*mut CK_INTERFACE, *mut CK_ULONG) -> CK_RV,
            > = self
                .lib
                .get(b"C_GetInterfaceList\0")
                .expect("the module exports no C_GetInterfaceList");
            let rv_null = get(ptr::null_mut(), ptr::null_mut());
            let mut one = [CK_INTERFACE {
                pInterfaceName: ptr::null_mut(),
                pFunctionList: ptr::null_mut(),
                flags: 0,
            }];
            let mut count: CK_ULONG = 0;
            let rv_short = get(one.as_mut_ptr(), &mut count);
            (rv_null, rv_short, count)
        }
    }

    /// `C_GetInterface(name, version, &iface, 0)`. Returns the rv and, on
    /// success, the interface name and the version of its function list.
    pub fn get_interface(
        &self,
        name: Option<&str>,
        version: Option<(u8, u8)>,
    ) -> (CK_RV, Option<(String, CK_VERSION)>) {
        let mut cname = name.map(|n| {
            let mut v = n.as_bytes().to_vec();
            v.push(0);
            v
        });
        let mut ver = version.map(|(major, minor)| CK_VERSION { major, minor });
        // SAFETY: symbol signature per PKCS#11 3.0; name and version are
        // owned here (or NULL, which the spec allows); the returned
        // interface is static data of the module.
        unsafe {
            let get: libloading::Symbol<
                '_,
                unsafe extern "C" fn(
                    *mut CK_UTF8CHAR,
                    *mut CK_VERSION,
                    *mut *mut CK_INTERFACE,
                    CK_FLAGS,
                ) -> CK_RV,
            > = self
                .lib
                .get(b"C_GetInterface\0")
                .expect("the module exports no C_GetInterface");
            let mut iface: *mut CK_INTERFACE = ptr::null_mut();
            let rv = get(
                cname.as_mut().map_or(ptr::null_mut(), |v| v.as_mut_ptr()),
                ver.as_mut()
                    .map_or(ptr::null_mut(), |v| v as *mut CK_VERSION),
                &mut iface,
                0,
            );
            if rv != CKR_OK || iface.is_null() {
                return (rv, None);
            }
            let i = &*iface;
            let n = if i.pInterfaceName.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr(i.pInterfaceName as *const std::ffi::c_char)
                    .to_string_lossy()
                    .into_owned()
            };
            let v = (*(i.pFunctionList as *const CK_FUNCTION_LIST)).version;
            (rv, Some((n, v)))
        }
    }

    /// `C_GetInterface` with a NULL `ppInterface`.
    pub fn get_interface_null(&self) -> CK_RV {
        // SAFETY: symbol signature per PKCS#11 3.0; the NULL output pointer
        // is the case under test.
        unsafe {
            let get: libloading::Symbol<
                '_,
                unsafe extern "C" fn(
                    *mut CK_UTF8CHAR,
                    *mut CK_VERSION,
                    *mut *mut CK_INTERFACE,
                    CK_FLAGS,
                ) -> CK_RV,
            > = self
                .lib
                .get(b"C_GetInterface\0")
                .expect("the module exports no C_GetInterface");
            get(ptr::null_mut(), ptr::null_mut(), ptr::null_mut(), 0)
        }
    }

    pub fn initialize(&self, args: InitArgs) -> CK_RV {
        unsafe extern "C" fn create(m: *mut *mut c_void) -> CK_RV {
            if m.is_null() {
                return CKR_ARGUMENTS_BAD;
            }
            // SAFETY: the module passes a valid out pointer; the "mutex" is a
            // dangling non-NULL token that the other callbacks ignore.
            unsafe { *m = ptr::NonNull::<u8>::dangling().as_ptr() as *mut c_void };
            CKR_OK
        }
        unsafe extern "C" fn noop(_m: *mut c_void) -> CK_RV {
            CKR_OK
        }
        let mut reserved = 0u64;
        let mut a = CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags: 0,
            pReserved: ptr::null_mut(),
        };
        match args {
            InitArgs::Null => return call!(self, C_Initialize(ptr::null_mut())),
            InitArgs::Flags(f) => a.flags = f,
            InitArgs::Reserved => {
                a.flags = CKF_OS_LOCKING_OK;
                a.pReserved = &mut reserved as *mut u64 as *mut c_void;
            }
            InitArgs::PartialMutex => {
                a.flags = CKF_OS_LOCKING_OK;
                a.CreateMutex = Some(create);
                a.DestroyMutex = Some(noop);
            }
            InitArgs::AllMutex(f) => {
                a.flags = f;
                a.CreateMutex = Some(create);
                a.DestroyMutex = Some(noop);
                a.LockMutex = Some(noop);
                a.UnlockMutex = Some(noop);
            }
        }
        call!(
            self,
            C_Initialize(&mut a as *mut CK_C_INITIALIZE_ARGS as *mut c_void)
        )
    }

    pub fn finalize(&self) -> CK_RV {
        call!(self, C_Finalize(ptr::null_mut()))
    }

    /// `C_Finalize` with a non-NULL `pReserved`.
    pub fn finalize_reserved(&self) -> CK_RV {
        let mut x = 0u64;
        call!(self, C_Finalize(&mut x as *mut u64 as *mut c_void))
    }

    pub fn get_info(&self) -> (CK_RV, CK_INFO) {
        // SAFETY: CK_INFO is plain old data; all-zero is a valid value.
        let mut info: CK_INFO = unsafe { std::mem::zeroed() };
        let rv = call!(self, C_GetInfo(&mut info));
        (rv, info)
    }

    pub fn get_info_null(&self) -> CK_RV {
        call!(self, C_GetInfo(ptr::null_mut()))
    }

    pub fn slot_list(&self, present: bool, out: Out) -> Output<CK_SLOT_ID> {
        let (mut buf, mut len) = match out {
            Out::Null => (Vec::new(), 0),
            Out::Cap(n) => (vec![CK_SLOT_ID::MAX; n], n as CK_ULONG),
        };
        let p = if out == Out::Null {
            ptr::null_mut()
        } else {
            buf.as_mut_ptr()
        };
        let rv = call!(self, C_GetSlotList(present as CK_BBOOL, p, &mut len));
        if rv == CKR_OK {
            buf.truncate(len as usize);
        }
        Output { rv, len, data: buf }
    }

    pub fn slot_list_null_count(&self) -> CK_RV {
        call!(
            self,
            C_GetSlotList(CK_FALSE, ptr::null_mut(), ptr::null_mut())
        )
    }

    pub fn slot_info(&self, slot: CK_SLOT_ID) -> (CK_RV, CK_SLOT_INFO) {
        // SAFETY: plain old data; all-zero is valid.
        let mut info: CK_SLOT_INFO = unsafe { std::mem::zeroed() };
        let rv = call!(self, C_GetSlotInfo(slot, &mut info));
        (rv, info)
    }

    pub fn slot_info_null(&self, slot: CK_SLOT_ID) -> CK_RV {
        call!(self, C_GetSlotInfo(slot, ptr::null_mut()))
    }

    pub fn token_info(&self, slot: CK_SLOT_ID) -> (CK_RV, CK_TOKEN_INFO) {
        // SAFETY: plain old data; all-zero is valid.
        let mut info: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
        let rv = call!(self, C_GetTokenInfo(slot, &mut info));
        (rv, info)
    }

    pub fn token_info_null(&self, slot: CK_SLOT_ID) -> CK_RV {
        call!(self, C_GetTokenInfo(slot, ptr::null_mut()))
    }

    pub fn mechanism_list(&self, slot: CK_SLOT_ID, out: Out) -> Output<CK_MECHANISM_TYPE> {
        let (mut buf, mut len) = match out {
            Out::Null => (Vec::new(), 0),
            Out::Cap(n) => (vec![CK_ULONG::MAX; n], n as CK_ULONG),
        };
        let p = if out == Out::Null {
            ptr::null_mut()
        } else {
            buf.as_mut_ptr()
        };
        let rv = call!(self, C_GetMechanismList(slot, p, &mut len));
        if rv == CKR_OK {
            buf.truncate(len as usize);
        }
        Output { rv, len, data: buf }
    }

    pub fn mechanism_list_null_count(&self, slot: CK_SLOT_ID) -> CK_RV {
        call!(
            self,
            C_GetMechanismList(slot, ptr::null_mut(), ptr::null_mut())
        )
    }

    pub fn mechanism_info(
        &self,
        slot: CK_SLOT_ID,
        m: CK_MECHANISM_TYPE,
    ) -> (CK_RV, CK_MECHANISM_INFO) {
        let mut info = CK_MECHANISM_INFO {
            ulMinKeySize: 0,
            ulMaxKeySize: 0,
            flags: 0,
        };
        let rv = call!(self, C_GetMechanismInfo(slot, m, &mut info));
        (rv, info)
    }

    pub fn mechanism_info_null(&self, slot: CK_SLOT_ID, m: CK_MECHANISM_TYPE) -> CK_RV {
        call!(self, C_GetMechanismInfo(slot, m, ptr::null_mut()))
    }

    pub fn init_token(&self, slot: CK_SLOT_ID, so_pin: &[u8], label: &str) -> CK_RV {
        let mut l = [b' '; 32];
        l[..label.len()].copy_from_slice(label.as_bytes());
        let mut pin = so_pin.to_vec();
        call!(
            self,
            C_InitToken(
                slot,
                pin.as_mut_ptr(),
                pin.len() as CK_ULONG,
                l.as_mut_ptr()
            )
        )
    }

    pub fn init_token_null_label(&self, slot: CK_SLOT_ID, so_pin: &[u8]) -> CK_RV {
        let mut pin = so_pin.to_vec();
        call!(
            self,
            C_InitToken(
                slot,
                pin.as_mut_ptr(),
                pin.len() as CK_ULONG,
                ptr::null_mut()
            )
        )
    }

    pub fn open_session(&self, slot: CK_SLOT_ID, flags: CK_FLAGS) -> (CK_RV, CK_SESSION_HANDLE) {
        let mut h: CK_SESSION_HANDLE = CK_INVALID_HANDLE;
        let rv = call!(
            self,
            C_OpenSession(slot, flags, ptr::null_mut(), None, &mut h)
        );
        (rv, h)
    }

    pub fn open_session_null(&self, slot: CK_SLOT_ID) -> CK_RV {
        call!(
            self,
            C_OpenSession(
                slot,
                CKF_SERIAL_SESSION,
                ptr::null_mut(),
                None,
                ptr::null_mut()
            )
        )
    }

    pub fn close_session(&self, h: CK_SESSION_HANDLE) -> CK_RV {
        call!(self, C_CloseSession(h))
    }

    pub fn close_all_sessions(&self, slot: CK_SLOT_ID) -> CK_RV {
        call!(self, C_CloseAllSessions(slot))
    }

    pub fn session_info(&self, h: CK_SESSION_HANDLE) -> (CK_RV, CK_SESSION_INFO) {
        let mut info = CK_SESSION_INFO {
            slotID: 0,
            state: 0,
            flags: 0,
            ulDeviceError: 0,
        };
        let rv = call!(self, C_GetSessionInfo(h, &mut info));
        (rv, info)
    }

    pub fn session_info_null(&self, h: CK_SESSION_HANDLE) -> CK_RV {
        call!(self, C_GetSessionInfo(h, ptr::null_mut()))
    }

    pub fn login(&self, h: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: &[u8]) -> CK_RV {
        let mut pin = pin.to_vec();
        let p = if pin.is_empty() {
            ptr::null_mut()
        } else {
            pin.as_mut_ptr()
        };
        call!(self, C_Login(h, user, p, pin.len() as CK_ULONG))
    }

    /// `C_Login` with a NULL PIN pointer but a non-zero length.
    pub fn login_null_pin(&self, h: CK_SESSION_HANDLE, user: CK_USER_TYPE, len: CK_ULONG) -> CK_RV {
        call!(self, C_Login(h, user, ptr::null_mut(), len))
    }

    pub fn logout(&self, h: CK_SESSION_HANDLE) -> CK_RV {
        call!(self, C_Logout(h))
    }

    pub fn init_pin(&self, h: CK_SESSION_HANDLE, pin: &[u8]) -> CK_RV {
        let mut pin = pin.to_vec();
        call!(self, C_InitPIN(h, pin.as_mut_ptr(), pin.len() as CK_ULONG))
    }

    pub fn set_pin(&self, h: CK_SESSION_HANDLE, old: &[u8], new: &[u8]) -> CK_RV {
        let mut old = old.to_vec();
        let mut new = new.to_vec();
        call!(
            self,
            C_SetPIN(
                h,
                old.as_mut_ptr(),
                old.len() as CK_ULONG,
                new.as_mut_ptr(),
                new.len() as CK_ULONG
            )
        )
    }

    pub fn create_object(
        &self,
        h: CK_SESSION_HANDLE,
        template: &[Attr],
    ) -> (CK_RV, CK_OBJECT_HANDLE) {
        let mut t = CTemplate::new(template);
        let mut o: CK_OBJECT_HANDLE = CK_INVALID_HANDLE;
        let rv = call!(self, C_CreateObject(h, t.ptr(), t.len(), &mut o));
        (rv, o)
    }

    /// `C_CreateObject` with a NULL template of `count` entries, or (when
    /// `null_handle`) a valid template and a NULL `phObject`.
    pub fn create_object_null(
        &self,
        h: CK_SESSION_HANDLE,
        template: &[Attr],
        null_handle: bool,
    ) -> CK_RV {
        if null_handle {
            let mut t = CTemplate::new(template);
            call!(self, C_CreateObject(h, t.ptr(), t.len(), ptr::null_mut()))
        } else {
            let mut o: CK_OBJECT_HANDLE = CK_INVALID_HANDLE;
            call!(
                self,
                C_CreateObject(
                    h,
                    ptr::null_mut(),
                    template.len().max(1) as CK_ULONG,
                    &mut o
                )
            )
        }
    }

    pub fn destroy_object(&self, h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE) -> CK_RV {
        call!(self, C_DestroyObject(h, o))
    }

    pub fn object_size(&self, h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE) -> (CK_RV, CK_ULONG) {
        let mut size: CK_ULONG = 0;
        let rv = call!(self, C_GetObjectSize(h, o, &mut size));
        (rv, size)
    }

    pub fn object_size_null(&self, h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE) -> CK_RV {
        call!(self, C_GetObjectSize(h, o, ptr::null_mut()))
    }

    /// `C_GetAttributeValue` with one entry per request; fills in `len` and
    /// `value` (the bytes written, up to the returned length) of each.
    pub fn get_attributes(
        &self,
        h: CK_SESSION_HANDLE,
        o: CK_OBJECT_HANDLE,
        reqs: &mut [AttrReq],
    ) -> CK_RV {
        let mut bufs: Vec<Vec<u8>> = reqs
            .iter()
            .map(|r| match r.out {
                Out::Null => Vec::new(),
                Out::Cap(n) => vec![0u8; n],
            })
            .collect();
        let mut attrs: Vec<CK_ATTRIBUTE> = reqs
            .iter()
            .zip(bufs.iter_mut())
            .map(|(r, b)| CK_ATTRIBUTE {
                type_: r.type_,
                pValue: if r.out == Out::Null {
                    ptr::null_mut()
                } else {
                    b.as_mut_ptr() as *mut c_void
                },
                ulValueLen: b.len() as CK_ULONG,
            })
            .collect();
        let rv = call!(
            self,
            C_GetAttributeValue(h, o, attrs.as_mut_ptr(), attrs.len() as CK_ULONG)
        );
        for ((r, a), b) in reqs.iter_mut().zip(attrs.iter()).zip(bufs) {
            r.len = a.ulValueLen;
            r.value = b;
            if a.ulValueLen != CK_UNAVAILABLE_INFORMATION
                && (a.ulValueLen as usize) <= r.value.len()
            {
                r.value.truncate(a.ulValueLen as usize);
            }
        }
        rv
    }

    /// `C_GetAttributeValue` with a NULL template and a non-zero count.
    pub fn get_attributes_null_template(&self, h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE) -> CK_RV {
        call!(self, C_GetAttributeValue(h, o, ptr::null_mut(), 1))
    }

    /// Reads a template-valued attribute (`CKA_WRAP_TEMPLATE`, ...) with the
    /// three-step protocol: the size of the array, the length of each entry,
    /// then the values. Returns the rv of the first failing step.
    pub fn get_template_attribute(
        &self,
        h: CK_SESSION_HANDLE,
        o: CK_OBJECT_HANDLE,
        type_: CK_ATTRIBUTE_TYPE,
    ) -> Result<Vec<ReadAttr>, (&'static str, CK_RV)> {
        let mut outer = CK_ATTRIBUTE {
            type_,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        };
        let rv = call!(self, C_GetAttributeValue(h, o, &mut outer, 1));
        if rv != CKR_OK {
            return Err(("size of the template", rv));
        }
        let size = std::mem::size_of::<CK_ATTRIBUTE>() as CK_ULONG;
        if outer.ulValueLen == CK_UNAVAILABLE_INFORMATION || !outer.ulValueLen.is_multiple_of(size)
        {
            return Err((
                "template length not a multiple of sizeof(CK_ATTRIBUTE)",
                CKR_GENERAL_ERROR,
            ));
        }
        let n = (outer.ulValueLen / size) as usize;
        let mut inner = vec![
            CK_ATTRIBUTE {
                type_: 0,
                pValue: ptr::null_mut(),
                ulValueLen: 0,
            };
            n
        ];
        outer.pValue = inner.as_mut_ptr() as *mut c_void;
        let rv = call!(self, C_GetAttributeValue(h, o, &mut outer, 1));
        if rv != CKR_OK {
            return Err(("types and lengths of the entries", rv));
        }
        let mut bufs: Vec<Vec<u8>> = inner
            .iter()
            .map(|a| {
                vec![
                    0u8;
                    if a.ulValueLen == CK_UNAVAILABLE_INFORMATION {
                        0
                    } else {
                        a.ulValueLen as usize
                    }
                ]
            })
            .collect();
        for (a, b) in inner.iter_mut().zip(bufs.iter_mut()) {
            a.pValue = b.as_mut_ptr() as *mut c_void;
            a.ulValueLen = b.len() as CK_ULONG;
        }
        outer.pValue = inner.as_mut_ptr() as *mut c_void;
        outer.ulValueLen = n as CK_ULONG * size;
        let rv = call!(self, C_GetAttributeValue(h, o, &mut outer, 1));
        if rv != CKR_OK {
            return Err(("values of the entries", rv));
        }
        Ok(inner
            .iter()
            .zip(bufs)
            .map(|(a, mut b)| {
                b.truncate(a.ulValueLen as usize);
                ReadAttr {
                    type_: a.type_,
                    value: b,
                }
            })
            .collect())
    }

    pub fn set_attributes(
        &self,
        h: CK_SESSION_HANDLE,
        o: CK_OBJECT_HANDLE,
        template: &[Attr],
    ) -> CK_RV {
        let mut t = CTemplate::new(template);
        call!(self, C_SetAttributeValue(h, o, t.ptr(), t.len()))
    }

    pub fn find_objects_init(&self, h: CK_SESSION_HANDLE, template: &[Attr]) -> CK_RV {
        let mut t = CTemplate::new(template);
        call!(self, C_FindObjectsInit(h, t.ptr(), t.len()))
    }

    /// `C_FindObjectsInit` with a NULL template and a count of one.
    pub fn find_objects_init_null(&self, h: CK_SESSION_HANDLE) -> CK_RV {
        call!(self, C_FindObjectsInit(h, ptr::null_mut(), 1))
    }

    pub fn find_objects(&self, h: CK_SESSION_HANDLE, max: usize) -> (CK_RV, Vec<CK_OBJECT_HANDLE>) {
        let mut buf = vec![CK_INVALID_HANDLE; max.max(1)];
        let mut n: CK_ULONG = 0;
        let rv = call!(
            self,
            C_FindObjects(h, buf.as_mut_ptr(), max as CK_ULONG, &mut n)
        );
        buf.truncate(if rv == CKR_OK {
            (n as usize).min(max)
        } else {
            0
        });
        (rv, buf)
    }

    pub fn find_objects_null_count(&self, h: CK_SESSION_HANDLE) -> CK_RV {
        let mut buf = [CK_INVALID_HANDLE; 4];
        call!(self, C_FindObjects(h, buf.as_mut_ptr(), 4, ptr::null_mut()))
    }

    pub fn find_objects_final(&self, h: CK_SESSION_HANDLE) -> CK_RV {
        call!(self, C_FindObjectsFinal(h))
    }

    pub fn generate_key(
        &self,
        h: CK_SESSION_HANDLE,
        m: &Mech,
        template: &[Attr],
    ) -> (CK_RV, CK_OBJECT_HANDLE) {
        let mut t = CTemplate::new(template);
        let mut o: CK_OBJECT_HANDLE = CK_INVALID_HANDLE;
        let rv = with_mech(m, |mp| {
            call!(self, C_GenerateKey(h, mp, t.ptr(), t.len(), &mut o))
        });
        (rv, o)
    }

    pub fn generate_key_pair(
        &self,
        h: CK_SESSION_HANDLE,
        m: &Mech,
        public: &[Attr],
        private: &[Attr],
    ) -> (CK_RV, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) {
        let mut tpub = CTemplate::new(public);
        let mut tpriv = CTemplate::new(private);
        let mut o_pub: CK_OBJECT_HANDLE = CK_INVALID_HANDLE;
        let mut o_priv: CK_OBJECT_HANDLE = CK_INVALID_HANDLE;
        let rv = with_mech(m, |mp| {
            call!(
                self,
                C_GenerateKeyPair(
                    h,
                    mp,
                    tpub.ptr(),
                    tpub.len(),
                    tpriv.ptr(),
                    tpriv.len(),
                    &mut o_pub,
                    &mut o_priv
                )
            )
        });
        (rv, o_pub, o_priv)
    }

    pub fn sign_init(&self, h: CK_SESSION_HANDLE, m: &Mech, key: CK_OBJECT_HANDLE) -> CK_RV {
        with_mech(m, |mp| call!(self, C_SignInit(h, mp, key)))
    }

    /// `C_SignInit` with a NULL mechanism pointer.
    pub fn sign_init_null(&self, h: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> CK_RV {
        call!(self, C_SignInit(h, ptr::null_mut(), key))
    }

    pub fn verify_init(&self, h: CK_SESSION_HANDLE, m: &Mech, key: CK_OBJECT_HANDLE) -> CK_RV {
        with_mech(m, |mp| call!(self, C_VerifyInit(h, mp, key)))
    }

    pub fn encrypt_init(&self, h: CK_SESSION_HANDLE, m: &Mech, key: CK_OBJECT_HANDLE) -> CK_RV {
        with_mech(m, |mp| call!(self, C_EncryptInit(h, mp, key)))
    }

    pub fn decrypt_init(&self, h: CK_SESSION_HANDLE, m: &Mech, key: CK_OBJECT_HANDLE) -> CK_RV {
        with_mech(m, |mp| call!(self, C_DecryptInit(h, mp, key)))
    }

    pub fn digest_init(&self, h: CK_SESSION_HANDLE, m: &Mech) -> CK_RV {
        with_mech(m, |mp| call!(self, C_DigestInit(h, mp)))
    }

    pub fn sign_recover_init(
        &self,
        h: CK_SESSION_HANDLE,
        m: &Mech,
        key: CK_OBJECT_HANDLE,
    ) -> CK_RV {
        with_mech(m, |mp| call!(self, C_SignRecoverInit(h, mp, key)))
    }

    pub fn verify_recover_init(
        &self,
        h: CK_SESSION_HANDLE,
        m: &Mech,
        key: CK_OBJECT_HANDLE,
    ) -> CK_RV {
        with_mech(m, |mp| call!(self, C_VerifyRecoverInit(h, mp, key)))
    }

    pub fn derive_key(
        &self,
        h: CK_SESSION_HANDLE,
        m: &Mech,
        base: CK_OBJECT_HANDLE,
        template: &[Attr],
    ) -> (CK_RV, CK_OBJECT_HANDLE) {
        let mut t = CTemplate::new(template);
        let mut o: CK_OBJECT_HANDLE = CK_INVALID_HANDLE;
        let rv = with_mech(m, |mp| {
            call!(self, C_DeriveKey(h, mp, base, t.ptr(), t.len(), &mut o))
        });
        (rv, o)
    }

    /// Runs a one-shot output function (`C_Sign`, `C_Encrypt`, ...) with the
    /// given output convention.
    fn one_shot(
        &self,
        out: Out,
        input: &[u8],
        f: impl FnOnce(*mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG) -> CK_RV,
    ) -> Output<u8> {
        let mut inp = input.to_vec();
        let (mut buf, mut len) = match out {
            Out::Null => (Vec::new(), 0),
            Out::Cap(n) => (vec![0u8; n], n as CK_ULONG),
        };
        let p = if out == Out::Null {
            ptr::null_mut()
        } else {
            buf.as_mut_ptr()
        };
        let ip = if inp.is_empty() {
            ptr::null_mut()
        } else {
            inp.as_mut_ptr()
        };
        let rv = f(ip, inp.len() as CK_ULONG, p, &mut len);
        if rv == CKR_OK && (len as usize) <= buf.len() {
            buf.truncate(len as usize);
        }
        Output { rv, len, data: buf }
    }

    pub fn sign(&self, h: CK_SESSION_HANDLE, data: &[u8], out: Out) -> Output<u8> {
        self.one_shot(out, data, |i, il, o, ol| {
            call!(self, C_Sign(h, i, il, o, ol))
        })
    }

    /// `C_Sign` with a NULL `pulSignatureLen`.
    pub fn sign_null_len(&self, h: CK_SESSION_HANDLE, data: &[u8]) -> CK_RV {
        with_input(data, |d, n| {
            call!(self, C_Sign(h, d, n, ptr::null_mut(), ptr::null_mut()))
        })
    }

    pub fn sign_update(&self, h: CK_SESSION_HANDLE, data: &[u8]) -> CK_RV {
        with_input(data, |d, n| call!(self, C_SignUpdate(h, d, n)))
    }

    pub fn sign_final(&self, h: CK_SESSION_HANDLE, out: Out) -> Output<u8> {
        self.one_shot(out, &[], |_, _, o, ol| call!(self, C_SignFinal(h, o, ol)))
    }

    pub fn verify(&self, h: CK_SESSION_HANDLE, data: &[u8], sig: &[u8]) -> CK_RV {
        let mut d = data.to_vec();
        let mut s = sig.to_vec();
        call!(
            self,
            C_Verify(
                h,
                d.as_mut_ptr(),
                d.len() as CK_ULONG,
                s.as_mut_ptr(),
                s.len() as CK_ULONG
            )
        )
    }

    pub fn encrypt(&self, h: CK_SESSION_HANDLE, data: &[u8], out: Out) -> Output<u8> {
        self.one_shot(out, data, |i, il, o, ol| {
            call!(self, C_Encrypt(h, i, il, o, ol))
        })
    }

    pub fn decrypt(&self, h: CK_SESSION_HANDLE, data: &[u8], out: Out) -> Output<u8> {
        self.one_shot(out, data, |i, il, o, ol| {
            call!(self, C_Decrypt(h, i, il, o, ol))
        })
    }

    pub fn digest(&self, h: CK_SESSION_HANDLE, data: &[u8], out: Out) -> Output<u8> {
        self.one_shot(out, data, |i, il, o, ol| {
            call!(self, C_Digest(h, i, il, o, ol))
        })
    }

    pub fn sign_recover(&self, h: CK_SESSION_HANDLE, data: &[u8], out: Out) -> Output<u8> {
        self.one_shot(out, data, |i, il, o, ol| {
            call!(self, C_SignRecover(h, i, il, o, ol))
        })
    }

    pub fn verify_recover(&self, h: CK_SESSION_HANDLE, sig: &[u8], out: Out) -> Output<u8> {
        self.one_shot(out, sig, |i, il, o, ol| {
            call!(self, C_VerifyRecover(h, i, il, o, ol))
        })
    }

    pub fn wrap_key(
        &self,
        h: CK_SESSION_HANDLE,
        m: &Mech,
        wrapping: CK_OBJECT_HANDLE,
        key: CK_OBJECT_HANDLE,
        out: Out,
    ) -> Output<u8> {
        with_mech(m, |mp| {
            self.one_shot(out, &[], |_, _, o, ol| {
                call!(self, C_WrapKey(h, mp, wrapping, key, o, ol))
            })
        })
    }

    pub fn generate_random(&self, h: CK_SESSION_HANDLE, len: usize) -> (CK_RV, Vec<u8>) {
        // A zero-length request still gets a valid (non-NULL) buffer.
        let mut buf = vec![0u8; len.max(1)];
        let rv = call!(self, C_GenerateRandom(h, buf.as_mut_ptr(), len as CK_ULONG));
        buf.truncate(len);
        (rv, buf)
    }

    /// `C_GenerateRandom` with a NULL buffer and a non-zero length.
    pub fn generate_random_null(&self, h: CK_SESSION_HANDLE, len: CK_ULONG) -> CK_RV {
        call!(self, C_GenerateRandom(h, ptr::null_mut(), len))
    }

    pub fn seed_random(&self, h: CK_SESSION_HANDLE, seed: &[u8]) -> CK_RV {
        let mut s = seed.to_vec();
        call!(self, C_SeedRandom(h, s.as_mut_ptr(), s.len() as CK_ULONG))
    }

    /// `C_GetOperationState` as a length query.
    pub fn get_operation_state_len(&self, h: CK_SESSION_HANDLE) -> CK_RV {
        let mut len: CK_ULONG = 0;
        call!(self, C_GetOperationState(h, ptr::null_mut(), &mut len))
    }

    pub fn get_function_status(&self, h: CK_SESSION_HANDLE) -> CK_RV {
        call!(self, C_GetFunctionStatus(h))
    }

    pub fn cancel_function(&self, h: CK_SESSION_HANDLE) -> CK_RV {
        call!(self, C_CancelFunction(h))
    }

    /// `C_WaitForSlotEvent(CKF_DONT_BLOCK, &slot, NULL)`.
    pub fn wait_for_slot_event_nonblocking(&self) -> CK_RV {
        let mut slot: CK_SLOT_ID = 0;
        call!(
            self,
            C_WaitForSlotEvent(CKF_DONT_BLOCK, &mut slot, ptr::null_mut())
        )
    }

    /// `C_DigestEncryptUpdate` with an empty part (dual-function call).
    pub fn digest_encrypt_update_len(&self, h: CK_SESSION_HANDLE, part: &[u8]) -> CK_RV {
        let mut len: CK_ULONG = 0;
        with_input(part, |d, n| {
            call!(
                self,
                C_DigestEncryptUpdate(h, d, n, ptr::null_mut(), &mut len)
            )
        })
    }
}

/// Multi-part output calls, key management with raw arguments, slot events
/// and the NULL-pointer variants of calls whose NULL cases the tests check.
impl Raw {
    pub fn encrypt_update(&self, h: CK_SESSION_HANDLE, part: &[u8], out: Out) -> Output<u8> {
        self.one_shot(out, part, |i, il, o, ol| {
            call!(self, C_EncryptUpdate(h, i, il, o, ol))
        })
    }

    pub fn encrypt_final(&self, h: CK_SESSION_HANDLE, out: Out) -> Output<u8> {
        self.one_shot(out, &[], |_, _, o, ol| {
            call!(self, C_EncryptFinal(h, o, ol))
        })
    }

    pub fn decrypt_update(&self, h: CK_SESSION_HANDLE, part: &[u8], out: Out) -> Output<u8> {
        self.one_shot(out, part, |i, il, o, ol| {
            call!(self, C_DecryptUpdate(h, i, il, o, ol))
        })
    }

    pub fn decrypt_final(&self, h: CK_SESSION_HANDLE, out: Out) -> Output<u8> {
        self.one_shot(out, &[], |_, _, o, ol| {
            call!(self, C_DecryptFinal(h, o, ol))
        })
    }

    /// `C_Encrypt` with a NULL `pulEncryptedDataLen`.
    pub fn encrypt_null_len(&self, h: CK_SESSION_HANDLE, data: &[u8]) -> CK_RV {
        with_input(data, |d, n| {
            call!(self, C_Encrypt(h, d, n, ptr::null_mut(), ptr::null_mut()))
        })
    }

    /// `C_Decrypt` with a NULL `pulDataLen`.
    pub fn decrypt_null_len(&self, h: CK_SESSION_HANDLE, data: &[u8]) -> CK_RV {
        with_input(data, |d, n| {
            call!(self, C_Decrypt(h, d, n, ptr::null_mut(), ptr::null_mut()))
        })
    }

    /// `C_Digest` with a NULL `pulDigestLen`.
    pub fn digest_null_len(&self, h: CK_SESSION_HANDLE, data: &[u8]) -> CK_RV {
        with_input(data, |d, n| {
            call!(self, C_Digest(h, d, n, ptr::null_mut(), ptr::null_mut()))
        })
    }

    /// `C_Verify` with a NULL signature of a non-zero length.
    pub fn verify_null_signature(&self, h: CK_SESSION_HANDLE, data: &[u8], len: CK_ULONG) -> CK_RV {
        with_input(data, |d, n| {
            call!(self, C_Verify(h, d, n, ptr::null_mut(), len))
        })
    }

    pub fn digest_update(&self, h: CK_SESSION_HANDLE, part: &[u8]) -> CK_RV {
        with_input(part, |d, n| call!(self, C_DigestUpdate(h, d, n)))
    }

    pub fn digest_key(&self, h: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> CK_RV {
        call!(self, C_DigestKey(h, key))
    }

    pub fn digest_final(&self, h: CK_SESSION_HANDLE, out: Out) -> Output<u8> {
        self.one_shot(out, &[], |_, _, o, ol| call!(self, C_DigestFinal(h, o, ol)))
    }

    pub fn copy_object(
        &self,
        h: CK_SESSION_HANDLE,
        o: CK_OBJECT_HANDLE,
        template: &[Attr],
    ) -> (CK_RV, CK_OBJECT_HANDLE) {
        let mut t = CTemplate::new(template);
        let mut n: CK_OBJECT_HANDLE = CK_INVALID_HANDLE;
        let rv = call!(self, C_CopyObject(h, o, t.ptr(), t.len(), &mut n));
        (rv, n)
    }

    /// `C_CopyObject` with a NULL `pTemplate` and a count of `count`.
    pub fn copy_object_null_template(
        &self,
        h: CK_SESSION_HANDLE,
        o: CK_OBJECT_HANDLE,
        count: CK_ULONG,
    ) -> (CK_RV, CK_OBJECT_HANDLE) {
        let mut n: CK_OBJECT_HANDLE = CK_INVALID_HANDLE;
        let rv = call!(self, C_CopyObject(h, o, ptr::null_mut(), count, &mut n));
        (rv, n)
    }

    /// `C_CopyObject` with an empty template: a valid, non-NULL array and a
    /// count of 0 (as NSS copies an object unchanged).
    pub fn copy_object_empty(
        &self,
        h: CK_SESSION_HANDLE,
        o: CK_OBJECT_HANDLE,
    ) -> (CK_RV, CK_OBJECT_HANDLE) {
        let mut none = [CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        }];
        let mut n: CK_OBJECT_HANDLE = CK_INVALID_HANDLE;
        let rv = call!(self, C_CopyObject(h, o, none.as_mut_ptr(), 0, &mut n));
        (rv, n)
    }

    /// `C_CopyObject` with a NULL `phNewObject`.
    pub fn copy_object_null(&self, h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE) -> CK_RV {
        let mut t = CTemplate::new(&[Attr::Bytes(CKA_LABEL, b"x".to_vec())]);
        call!(self, C_CopyObject(h, o, t.ptr(), t.len(), ptr::null_mut()))
    }

    /// `C_SetAttributeValue` with a NULL template and a count of one.
    pub fn set_attributes_null(&self, h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE) -> CK_RV {
        call!(self, C_SetAttributeValue(h, o, ptr::null_mut(), 1))
    }

    /// `C_FindObjects` with a NULL handle array and a non-zero maximum.
    pub fn find_objects_null_array(&self, h: CK_SESSION_HANDLE) -> CK_RV {
        let mut n: CK_ULONG = 0;
        call!(self, C_FindObjects(h, ptr::null_mut(), 4, &mut n))
    }

    /// `C_GenerateKey` with a NULL `phKey`.
    pub fn generate_key_null(&self, h: CK_SESSION_HANDLE, m: &Mech, template: &[Attr]) -> CK_RV {
        let mut t = CTemplate::new(template);
        with_mech(m, |mp| {
            call!(
                self,
                C_GenerateKey(h, mp, t.ptr(), t.len(), ptr::null_mut())
            )
        })
    }

    /// `C_GenerateKey` with a NULL mechanism.
    pub fn generate_key_null_mech(&self, h: CK_SESSION_HANDLE, template: &[Attr]) -> CK_RV {
        let mut t = CTemplate::new(template);
        let mut o: CK_OBJECT_HANDLE = CK_INVALID_HANDLE;
        call!(
            self,
            C_GenerateKey(h, ptr::null_mut(), t.ptr(), t.len(), &mut o)
        )
    }

    /// `C_GenerateKeyPair` with a NULL `phPrivateKey`.
    pub fn generate_key_pair_null(
        &self,
        h: CK_SESSION_HANDLE,
        m: &Mech,
        public: &[Attr],
        private: &[Attr],
    ) -> CK_RV {
        let mut tpub = CTemplate::new(public);
        let mut tpriv = CTemplate::new(private);
        let mut o_pub: CK_OBJECT_HANDLE = CK_INVALID_HANDLE;
        with_mech(m, |mp| {
            call!(
                self,
                C_GenerateKeyPair(
                    h,
                    mp,
                    tpub.ptr(),
                    tpub.len(),
                    tpriv.ptr(),
                    tpriv.len(),
                    &mut o_pub,
                    ptr::null_mut()
                )
            )
        })
    }

    /// `C_WrapKey` with a NULL `pulWrappedKeyLen`.
    pub fn wrap_key_null_len(
        &self,
        h: CK_SESSION_HANDLE,
        m: &Mech,
        wrapping: CK_OBJECT_HANDLE,
        key: CK_OBJECT_HANDLE,
    ) -> CK_RV {
        with_mech(m, |mp| {
            call!(
                self,
                C_WrapKey(h, mp, wrapping, key, ptr::null_mut(), ptr::null_mut())
            )
        })
    }

    pub fn unwrap_key(
        &self,
        h: CK_SESSION_HANDLE,
        m: &Mech,
        unwrapping: CK_OBJECT_HANDLE,
        wrapped: &[u8],
        template: &[Attr],
    ) -> (CK_RV, CK_OBJECT_HANDLE) {
        let mut t = CTemplate::new(template);
        let mut w = wrapped.to_vec();
        let mut o: CK_OBJECT_HANDLE = CK_INVALID_HANDLE;
        let rv = with_mech(m, |mp| {
            call!(
                self,
                C_UnwrapKey(
                    h,
                    mp,
                    unwrapping,
                    w.as_mut_ptr(),
                    w.len() as CK_ULONG,
                    t.ptr(),
                    t.len(),
                    &mut o
                )
            )
        });
        (rv, o)
    }

    /// `C_UnwrapKey` with a NULL `phKey` (`null_handle`) or a NULL wrapped
    /// key of a non-zero length.
    pub fn unwrap_key_null(
        &self,
        h: CK_SESSION_HANDLE,
        m: &Mech,
        unwrapping: CK_OBJECT_HANDLE,
        wrapped: &[u8],
        template: &[Attr],
        null_handle: bool,
    ) -> CK_RV {
        let mut t = CTemplate::new(template);
        let mut w = wrapped.to_vec();
        let mut o: CK_OBJECT_HANDLE = CK_INVALID_HANDLE;
        let (wp, po) = if null_handle {
            (w.as_mut_ptr(), ptr::null_mut())
        } else {
            (ptr::null_mut(), &mut o as *mut CK_OBJECT_HANDLE)
        };
        with_mech(m, |mp| {
            call!(
                self,
                C_UnwrapKey(
                    h,
                    mp,
                    unwrapping,
                    wp,
                    w.len() as CK_ULONG,
                    t.ptr(),
                    t.len(),
                    po
                )
            )
        })
    }

    /// `C_DeriveKey` with a NULL `phKey`.
    pub fn derive_key_null(
        &self,
        h: CK_SESSION_HANDLE,
        m: &Mech,
        base: CK_OBJECT_HANDLE,
        template: &[Attr],
    ) -> CK_RV {
        let mut t = CTemplate::new(template);
        with_mech(m, |mp| {
            call!(
                self,
                C_DeriveKey(h, mp, base, t.ptr(), t.len(), ptr::null_mut())
            )
        })
    }

    /// `C_SeedRandom` with a NULL seed of a non-zero length.
    pub fn seed_random_null(&self, h: CK_SESSION_HANDLE, len: CK_ULONG) -> CK_RV {
        call!(self, C_SeedRandom(h, ptr::null_mut(), len))
    }

    /// `C_InitPIN` with a NULL PIN of a non-zero length.
    pub fn init_pin_null(&self, h: CK_SESSION_HANDLE, len: CK_ULONG) -> CK_RV {
        call!(self, C_InitPIN(h, ptr::null_mut(), len))
    }

    /// `C_SetPIN` with a NULL old PIN of a non-zero length.
    pub fn set_pin_null_old(&self, h: CK_SESSION_HANDLE, len: CK_ULONG, new: &[u8]) -> CK_RV {
        let mut new = new.to_vec();
        call!(
            self,
            C_SetPIN(
                h,
                ptr::null_mut(),
                len,
                new.as_mut_ptr(),
                new.len() as CK_ULONG
            )
        )
    }

    /// `C_WaitForSlotEvent(flags, &slot, NULL)`: the rv and the slot the
    /// module wrote.
    pub fn wait_for_slot_event(&self, flags: CK_FLAGS) -> (CK_RV, CK_SLOT_ID) {
        let mut slot: CK_SLOT_ID = CK_SLOT_ID::MAX;
        let rv = call!(self, C_WaitForSlotEvent(flags, &mut slot, ptr::null_mut()));
        (rv, slot)
    }

    /// `C_WaitForSlotEvent` with a NULL `pSlot` (`null_slot`) or a non-NULL
    /// `pReserved`.
    pub fn wait_for_slot_event_bad(&self, flags: CK_FLAGS, null_slot: bool) -> CK_RV {
        let mut slot: CK_SLOT_ID = 0;
        let mut reserved = 0u64;
        if null_slot {
            call!(
                self,
                C_WaitForSlotEvent(flags, ptr::null_mut(), ptr::null_mut())
            )
        } else {
            call!(
                self,
                C_WaitForSlotEvent(flags, &mut slot, &mut reserved as *mut u64 as *mut c_void)
            )
        }
    }

    pub fn encrypt_init_null(&self, h: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> CK_RV {
        call!(self, C_EncryptInit(h, ptr::null_mut(), key))
    }

    pub fn digest_init_null(&self, h: CK_SESSION_HANDLE) -> CK_RV {
        call!(self, C_DigestInit(h, ptr::null_mut()))
    }
}

/// `data` copied into a buffer the call may write to (the C signatures take
/// `CK_BYTE_PTR`), passed as pointer and length to `f`.
fn with_input(data: &[u8], f: impl FnOnce(*mut CK_BYTE, CK_ULONG) -> CK_RV) -> CK_RV {
    let mut d = data.to_vec();
    f(d.as_mut_ptr(), d.len() as CK_ULONG)
}
