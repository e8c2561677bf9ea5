//! `libkeyward_pkcs11.so`: the PKCS#11 module applications load. It checks
//! arguments, applies the C calling conventions and forwards each call to
//! `keyward-agent` as one request over a Unix socket. It makes no policy
//! decision: it runs inside the application.
//!
//! Layout:
//! - `lib.rs` (this file): the three exported symbols, the 2.40 and 3.0
//!   function tables, and `entry_points!`, the one macro that generates
//!   every `extern "C"` entry point (panic catching, the initialised / fork
//!   guard, trace logging, the single `Result -> CK_RV` conversion).
//!   Unsupported functions come from lists in the same invocation.
//! - `ffi.rs`: every raw-pointer read and write, behind one safe wrapper
//!   per C shape (bytes, templates, output buffers, mechanisms, ...).
//! - `error.rs`: the crate's error enum and its `CKR_*` mapping.
//! - `client.rs`: the global state, the connection pool, `Hello`, agent
//!   restart and fork handling.
//! - `state.rs`: the local session table and per-operation state.
//! - `fns/`: the calls, grouped by chapter of the specification: `general`,
//!   `slot_token`, `session`, `object`, `crypto`, `keys`, `random`.
//!
//! Environment: `KEYWARD_SOCKET` (agent socket), `KEYWARD_LOG` (log level
//! to standard error; unset means silent), `KEYWARD_TIMEOUT_MS` (bound on
//! one wait for the agent). Nothing runs at load time.
#![deny(unsafe_op_in_unsafe_fn)]

mod client;
mod error;
mod ffi;
mod fns;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod remote;
mod state;

use std::panic::{self, AssertUnwindSafe};
use std::ptr;

use pkcs11_sys::*;

use crate::error::{Error, Result};
use crate::fns::{crypto, general, keys, object, random, session, slot_token};
use keyward_protocol::Op;

// The wire carries CK_ULONG as u64 and the module converts by identity:
// keyward runs where `unsigned long` is 64 bits (LP64 Unix).
const _: () = assert!(std::mem::size_of::<CK_ULONG>() == 8);

/// Runs one call: a panic becomes `CKR_GENERAL_ERROR` (never an abort of
/// the host application), an error its `CK_RV`.
fn entry(name: &'static str, call: impl FnOnce() -> Result<()>) -> CK_RV {
    let rv = match panic::catch_unwind(AssertUnwindSafe(call)) {
        Ok(Ok(())) => CKR_OK,
        Ok(Err(e)) => e.rv(),
        Err(_) => {
            log::error!("{name} panicked; returning CKR_GENERAL_ERROR");
            Error::Internal.rv()
        }
    };
    log::trace!("{name} -> {rv:#x}");
    rv
}

/// Generates the `extern "C"` entry points and both function tables.
///
/// Each supported entry names its table field, the generated function, its
/// C parameters, a guard and the body:
/// - `[free]`: callable before `C_Initialize`;
/// - `[init]`: needs an initialised module in this process;
/// - `[m]`: the same, and binds the module to `m` for the body.
///
/// The body builds the `ffi` wrappers from the raw arguments and calls a
/// private `fn(...) -> Result<()>`. Unsupported entries list the field,
/// the function, the C parameter types and the error they answer.
macro_rules! entry_points {
    (
        v2 { $( $(#[$a2:meta])* $v2:vis $f2:ident = $fn2:ident ( $( $arg2:ident : $ty2:ty ),* ) $g2:tt => $body2:expr; )* }
        v2_unsupported { $( $u2:ident = $ufn2:ident ( $( $uty2:ty ),* ) => $err2:ident; )* }
        v3 { $( $(#[$a3:meta])* $v3:vis $f3:ident = $fn3:ident ( $( $arg3:ident : $ty3:ty ),* ) $g3:tt => $body3:expr; )* }
        v3_unsupported { $( $u3:ident = $ufn3:ident ( $( $uty3:ty ),* ) => $err3:ident; )* }
    ) => {
        $( entry_points!(@supported $(#[$a2])* $v2 $f2 $fn2 ( $( $arg2 : $ty2 ),* ) $g2 $body2); )*
        $( entry_points!(@supported $(#[$a3])* $v3 $f3 $fn3 ( $( $arg3 : $ty3 ),* ) $g3 $body3); )*
        $( entry_points!(@unsupported $u2 $ufn2 ( $( $uty2 ),* ) $err2); )*
        $( entry_points!(@unsupported $u3 $ufn3 ( $( $uty3 ),* ) $err3); )*

        /// The PKCS#11 2.40 function table (`C_GetFunctionList`).
        static FUNCTION_LIST: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
            version: CK_VERSION { major: 2, minor: 40 },
            $( $f2: Some($fn2), )*
            $( $u2: Some($ufn2), )*
        };

        /// The functions the module serves, by the names its log lines
        /// use: the call table's names for those that reach the agent.
        #[cfg(test)]
        const SERVED: &[&str] = &[$( stringify!($f2), )* $( stringify!($f3), )*];

        /// The PKCS#11 3.0 function table (`C_GetInterface("PKCS 11")`).
        static FUNCTION_LIST_3_0: CK_FUNCTION_LIST_3_0 = CK_FUNCTION_LIST_3_0 {
            version: CK_VERSION { major: 3, minor: 0 },
            $( $f2: Some($fn2), )*
            $( $u2: Some($ufn2), )*
            $( $f3: Some($fn3), )*
            $( $u3: Some($ufn3), )*
        };
    };

    (@supported $(#[$a:meta])* $vis:vis $field:ident $func:ident ( $( $arg:ident : $ty:ty ),* ) $guard:tt $body:expr) => {
        $(#[$a])*
        $vis unsafe extern "C" fn $func( $( $arg : $ty ),* ) -> CK_RV {
            entry(stringify!($field), || entry_points!(@guarded $guard $body))
        }
    };

    (@unsupported $field:ident $func:ident ( $( $ty:ty ),* ) $err:ident) => {
        unsafe extern "C" fn $func( $( _: $ty ),* ) -> CK_RV {
            entry(stringify!($field), || {
                client::current()?;
                Err(Error::$err)
            })
        }
    };

    (@guarded [free] $body:expr) => {{
        // SAFETY: the raw arguments come from the PKCS#11 caller, who
        // guarantees what each `ffi` wrapper's `new` requires (pointers
        // NULL or valid for their lengths during the call); `unused_unsafe`
        // because some bodies wrap no pointer at all.
        #[allow(unused_unsafe)]
        let result = unsafe { $body };
        result
    }};

    (@guarded [init] $body:expr) => {{
        client::current()?;
        entry_points!(@guarded [free] $body)
    }};

    (@guarded [$m:ident] $body:expr) => {{
        let module = client::current()?;
        let $m: &client::Module = &module;
        entry_points!(@guarded [free] $body)
    }};
}

entry_points! {
    v2 {
        /// The PKCS#11 2.40 entry point.
        ///
        /// # Safety
        /// `pp_function_list` is NULL or valid for writing one pointer.
        #[unsafe(no_mangle)]
        pub C_GetFunctionList = C_GetFunctionList(pp_function_list: CK_FUNCTION_LIST_PTR_PTR) [free]
            => get_function_list(ffi::Out::new(pp_function_list));
        C_Initialize = c_initialize(p_init_args: CK_VOID_PTR) [free]
            => general::initialize(ffi::InitArgs::new(p_init_args));
        C_Finalize = c_finalize(p_reserved: CK_VOID_PTR) [init]
            => general::finalize(ffi::Reserved::new(p_reserved));
        C_GetInfo = c_get_info(p_info: CK_INFO_PTR) [init]
            => general::get_info(ffi::Out::new(p_info));

        C_GetSlotList = c_get_slot_list(token_present: CK_BBOOL, p_slot_list: CK_SLOT_ID_PTR, pul_count: CK_ULONG_PTR) [m]
            => slot_token::get_slot_list(m, token_present != 0, ffi::OutList::new(p_slot_list, pul_count));
        C_GetSlotInfo = c_get_slot_info(slot: CK_SLOT_ID, p_info: CK_SLOT_INFO_PTR) [m]
            => slot_token::get_slot_info(m, slot, ffi::Out::new(p_info));
        C_GetTokenInfo = c_get_token_info(slot: CK_SLOT_ID, p_info: CK_TOKEN_INFO_PTR) [m]
            => slot_token::get_token_info(m, slot, ffi::Out::new(p_info));
        C_GetMechanismList = c_get_mechanism_list(slot: CK_SLOT_ID, p_list: CK_MECHANISM_TYPE_PTR, pul_count: CK_ULONG_PTR) [m]
            => slot_token::get_mechanism_list(m, slot, ffi::OutList::new(p_list, pul_count));
        C_GetMechanismInfo = c_get_mechanism_info(slot: CK_SLOT_ID, mech: CK_MECHANISM_TYPE, p_info: CK_MECHANISM_INFO_PTR) [m]
            => slot_token::get_mechanism_info(m, slot, mech, ffi::Out::new(p_info));
        C_InitToken = c_init_token(slot: CK_SLOT_ID, p_pin: CK_UTF8CHAR_PTR, pin_len: CK_ULONG, p_label: CK_UTF8CHAR_PTR) [m]
            => slot_token::init_token(m, slot, ffi::InBytes::new(p_pin, pin_len), ffi::InBytes::new(p_label, 32));
        C_InitPIN = c_init_pin(h: CK_SESSION_HANDLE, p_pin: CK_UTF8CHAR_PTR, pin_len: CK_ULONG) [m]
            => slot_token::init_pin(m, h, ffi::InBytes::new(p_pin, pin_len));
        C_SetPIN = c_set_pin(h: CK_SESSION_HANDLE, p_old: CK_UTF8CHAR_PTR, old_len: CK_ULONG, p_new: CK_UTF8CHAR_PTR, new_len: CK_ULONG) [m]
            => slot_token::set_pin(m, h, ffi::InBytes::new(p_old, old_len), ffi::InBytes::new(p_new, new_len));
        C_WaitForSlotEvent = c_wait_for_slot_event(flags: CK_FLAGS, p_slot: CK_SLOT_ID_PTR, p_reserved: CK_VOID_PTR) [m]
            => slot_token::wait_for_slot_event(m, flags, ffi::Out::new(p_slot), ffi::Reserved::new(p_reserved));

        C_OpenSession = c_open_session(slot: CK_SLOT_ID, flags: CK_FLAGS, _p_application: CK_VOID_PTR, _notify: CK_NOTIFY, ph_session: CK_SESSION_HANDLE_PTR) [m]
            => session::open_session(m, slot, flags, ffi::Out::new(ph_session));
        C_CloseSession = c_close_session(h: CK_SESSION_HANDLE) [m]
            => session::close_session(m, h);
        C_CloseAllSessions = c_close_all_sessions(slot: CK_SLOT_ID) [m]
            => session::close_all_sessions(m, slot);
        C_GetSessionInfo = c_get_session_info(h: CK_SESSION_HANDLE, p_info: CK_SESSION_INFO_PTR) [m]
            => session::get_session_info(m, h, ffi::Out::new(p_info));
        C_Login = c_login(h: CK_SESSION_HANDLE, user_type: CK_USER_TYPE, p_pin: CK_UTF8CHAR_PTR, pin_len: CK_ULONG) [m]
            => session::login(m, h, user_type, ffi::InBytes::new(p_pin, pin_len));
        C_Logout = c_logout(h: CK_SESSION_HANDLE) [m]
            => session::logout(m, h);

        C_CreateObject = c_create_object(h: CK_SESSION_HANDLE, p_template: CK_ATTRIBUTE_PTR, count: CK_ULONG, ph_object: CK_OBJECT_HANDLE_PTR) [m]
            => object::create_object(m, h, ffi::InTemplate::new(p_template, count), ffi::Out::new(ph_object));
        C_CopyObject = c_copy_object(h: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE, p_template: CK_ATTRIBUTE_PTR, count: CK_ULONG, ph_new: CK_OBJECT_HANDLE_PTR) [m]
            => object::copy_object(m, h, object, ffi::InTemplate::new(p_template, count), ffi::Out::new(ph_new));
        C_DestroyObject = c_destroy_object(h: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE) [m]
            => object::destroy_object(m, h, object);
        C_GetObjectSize = c_get_object_size(h: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE, pul_size: CK_ULONG_PTR) [m]
            => object::get_object_size(m, h, object, ffi::Out::new(pul_size));
        C_GetAttributeValue = c_get_attribute_value(h: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE, p_template: CK_ATTRIBUTE_PTR, count: CK_ULONG) [m]
            => object::get_attribute_value(m, h, object, ffi::OutTemplate::new(p_template, count));
        C_SetAttributeValue = c_set_attribute_value(h: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE, p_template: CK_ATTRIBUTE_PTR, count: CK_ULONG) [m]
            => object::set_attribute_value(m, h, object, ffi::InTemplate::new(p_template, count));
        C_FindObjectsInit = c_find_objects_init(h: CK_SESSION_HANDLE, p_template: CK_ATTRIBUTE_PTR, count: CK_ULONG) [m]
            => object::find_objects_init(m, h, ffi::InTemplate::new(p_template, count));
        C_FindObjects = c_find_objects(h: CK_SESSION_HANDLE, ph_object: CK_OBJECT_HANDLE_PTR, max: CK_ULONG, pul_count: CK_ULONG_PTR) [m]
            => object::find_objects(m, h, ffi::OutArray::new(ph_object, max), ffi::Out::new(pul_count));
        C_FindObjectsFinal = c_find_objects_final(h: CK_SESSION_HANDLE) [m]
            => object::find_objects_final(m, h);

        C_EncryptInit = c_encrypt_init(h: CK_SESSION_HANDLE, p_mech: CK_MECHANISM_PTR, key: CK_OBJECT_HANDLE) [m]
            => crypto::init(m, h, Op::Encrypt, ffi::InMechanism::new(p_mech), Some(key));
        C_Encrypt = c_encrypt(h: CK_SESSION_HANDLE, p_data: CK_BYTE_PTR, data_len: CK_ULONG, p_out: CK_BYTE_PTR, pul_out: CK_ULONG_PTR) [m]
            => crypto::single(m, h, Op::Encrypt, ffi::InBytes::new(p_data, data_len), ffi::OutBuf::new(p_out, pul_out));
        C_EncryptUpdate = c_encrypt_update(h: CK_SESSION_HANDLE, p_part: CK_BYTE_PTR, part_len: CK_ULONG, p_out: CK_BYTE_PTR, pul_out: CK_ULONG_PTR) [m]
            => crypto::update_with_output(m, h, Op::Encrypt, ffi::InBytes::new(p_part, part_len), ffi::OutBuf::new(p_out, pul_out));
        C_EncryptFinal = c_encrypt_final(h: CK_SESSION_HANDLE, p_out: CK_BYTE_PTR, pul_out: CK_ULONG_PTR) [m]
            => crypto::final_with_output(m, h, Op::Encrypt, ffi::OutBuf::new(p_out, pul_out));
        C_DecryptInit = c_decrypt_init(h: CK_SESSION_HANDLE, p_mech: CK_MECHANISM_PTR, key: CK_OBJECT_HANDLE) [m]
            => crypto::init(m, h, Op::Decrypt, ffi::InMechanism::new(p_mech), Some(key));
        C_Decrypt = c_decrypt(h: CK_SESSION_HANDLE, p_data: CK_BYTE_PTR, data_len: CK_ULONG, p_out: CK_BYTE_PTR, pul_out: CK_ULONG_PTR) [m]
            => crypto::single(m, h, Op::Decrypt, ffi::InBytes::new(p_data, data_len), ffi::OutBuf::new(p_out, pul_out));
        C_DecryptUpdate = c_decrypt_update(h: CK_SESSION_HANDLE, p_part: CK_BYTE_PTR, part_len: CK_ULONG, p_out: CK_BYTE_PTR, pul_out: CK_ULONG_PTR) [m]
            => crypto::update_with_output(m, h, Op::Decrypt, ffi::InBytes::new(p_part, part_len), ffi::OutBuf::new(p_out, pul_out));
        C_DecryptFinal = c_decrypt_final(h: CK_SESSION_HANDLE, p_out: CK_BYTE_PTR, pul_out: CK_ULONG_PTR) [m]
            => crypto::final_with_output(m, h, Op::Decrypt, ffi::OutBuf::new(p_out, pul_out));
        C_DigestInit = c_digest_init(h: CK_SESSION_HANDLE, p_mech: CK_MECHANISM_PTR) [m]
            => crypto::init(m, h, Op::Digest, ffi::InMechanism::new(p_mech), None);
        C_Digest = c_digest(h: CK_SESSION_HANDLE, p_data: CK_BYTE_PTR, data_len: CK_ULONG, p_out: CK_BYTE_PTR, pul_out: CK_ULONG_PTR) [m]
            => crypto::single(m, h, Op::Digest, ffi::InBytes::new(p_data, data_len), ffi::OutBuf::new(p_out, pul_out));
        C_DigestUpdate = c_digest_update(h: CK_SESSION_HANDLE, p_part: CK_BYTE_PTR, part_len: CK_ULONG) [m]
            => crypto::update(m, h, Op::Digest, ffi::InBytes::new(p_part, part_len));
        C_DigestKey = c_digest_key(h: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) [m]
            => crypto::digest_key(m, h, key);
        C_DigestFinal = c_digest_final(h: CK_SESSION_HANDLE, p_out: CK_BYTE_PTR, pul_out: CK_ULONG_PTR) [m]
            => crypto::final_with_output(m, h, Op::Digest, ffi::OutBuf::new(p_out, pul_out));
        C_SignInit = c_sign_init(h: CK_SESSION_HANDLE, p_mech: CK_MECHANISM_PTR, key: CK_OBJECT_HANDLE) [m]
            => crypto::init(m, h, Op::Sign, ffi::InMechanism::new(p_mech), Some(key));
        C_Sign = c_sign(h: CK_SESSION_HANDLE, p_data: CK_BYTE_PTR, data_len: CK_ULONG, p_out: CK_BYTE_PTR, pul_out: CK_ULONG_PTR) [m]
            => crypto::single(m, h, Op::Sign, ffi::InBytes::new(p_data, data_len), ffi::OutBuf::new(p_out, pul_out));
        C_SignUpdate = c_sign_update(h: CK_SESSION_HANDLE, p_part: CK_BYTE_PTR, part_len: CK_ULONG) [m]
            => crypto::update(m, h, Op::Sign, ffi::InBytes::new(p_part, part_len));
        C_SignFinal = c_sign_final(h: CK_SESSION_HANDLE, p_out: CK_BYTE_PTR, pul_out: CK_ULONG_PTR) [m]
            => crypto::final_with_output(m, h, Op::Sign, ffi::OutBuf::new(p_out, pul_out));
        C_SignRecoverInit = c_sign_recover_init(h: CK_SESSION_HANDLE, p_mech: CK_MECHANISM_PTR, key: CK_OBJECT_HANDLE) [m]
            => crypto::init(m, h, Op::SignRecover, ffi::InMechanism::new(p_mech), Some(key));
        C_SignRecover = c_sign_recover(h: CK_SESSION_HANDLE, p_data: CK_BYTE_PTR, data_len: CK_ULONG, p_out: CK_BYTE_PTR, pul_out: CK_ULONG_PTR) [m]
            => crypto::single(m, h, Op::SignRecover, ffi::InBytes::new(p_data, data_len), ffi::OutBuf::new(p_out, pul_out));
        C_VerifyInit = c_verify_init(h: CK_SESSION_HANDLE, p_mech: CK_MECHANISM_PTR, key: CK_OBJECT_HANDLE) [m]
            => crypto::init(m, h, Op::Verify, ffi::InMechanism::new(p_mech), Some(key));
        C_Verify = c_verify(h: CK_SESSION_HANDLE, p_data: CK_BYTE_PTR, data_len: CK_ULONG, p_sig: CK_BYTE_PTR, sig_len: CK_ULONG) [m]
            => crypto::verify(m, h, ffi::InBytes::new(p_data, data_len), ffi::InBytes::new(p_sig, sig_len));
        C_VerifyUpdate = c_verify_update(h: CK_SESSION_HANDLE, p_part: CK_BYTE_PTR, part_len: CK_ULONG) [m]
            => crypto::update(m, h, Op::Verify, ffi::InBytes::new(p_part, part_len));
        C_VerifyFinal = c_verify_final(h: CK_SESSION_HANDLE, p_sig: CK_BYTE_PTR, sig_len: CK_ULONG) [m]
            => crypto::verify_final(m, h, ffi::InBytes::new(p_sig, sig_len));
        C_VerifyRecoverInit = c_verify_recover_init(h: CK_SESSION_HANDLE, p_mech: CK_MECHANISM_PTR, key: CK_OBJECT_HANDLE) [m]
            => crypto::init(m, h, Op::VerifyRecover, ffi::InMechanism::new(p_mech), Some(key));
        C_VerifyRecover = c_verify_recover(h: CK_SESSION_HANDLE, p_sig: CK_BYTE_PTR, sig_len: CK_ULONG, p_out: CK_BYTE_PTR, pul_out: CK_ULONG_PTR) [m]
            => crypto::single(m, h, Op::VerifyRecover, ffi::InBytes::new(p_sig, sig_len), ffi::OutBuf::new(p_out, pul_out));

        C_GenerateKey = c_generate_key(h: CK_SESSION_HANDLE, p_mech: CK_MECHANISM_PTR, p_template: CK_ATTRIBUTE_PTR, count: CK_ULONG, ph_key: CK_OBJECT_HANDLE_PTR) [m]
            => keys::generate_key(m, h, ffi::InMechanism::new(p_mech), ffi::InTemplate::new(p_template, count), ffi::Out::new(ph_key));
        C_GenerateKeyPair = c_generate_key_pair(
            h: CK_SESSION_HANDLE,
            p_mech: CK_MECHANISM_PTR,
            p_public: CK_ATTRIBUTE_PTR,
            public_count: CK_ULONG,
            p_private: CK_ATTRIBUTE_PTR,
            private_count: CK_ULONG,
            ph_public: CK_OBJECT_HANDLE_PTR,
            ph_private: CK_OBJECT_HANDLE_PTR
        ) [m]
            => keys::generate_key_pair(
                m,
                h,
                ffi::InMechanism::new(p_mech),
                ffi::InTemplate::new(p_public, public_count),
                ffi::InTemplate::new(p_private, private_count),
                ffi::Out::new(ph_public),
                ffi::Out::new(ph_private),
            );
        C_WrapKey = c_wrap_key(h: CK_SESSION_HANDLE, p_mech: CK_MECHANISM_PTR, wrapping_key: CK_OBJECT_HANDLE, key: CK_OBJECT_HANDLE, p_out: CK_BYTE_PTR, pul_out: CK_ULONG_PTR) [m]
            => keys::wrap_key(m, h, ffi::InMechanism::new(p_mech), wrapping_key, key, ffi::OutBuf::new(p_out, pul_out));
        C_UnwrapKey = c_unwrap_key(
            h: CK_SESSION_HANDLE,
            p_mech: CK_MECHANISM_PTR,
            unwrapping_key: CK_OBJECT_HANDLE,
            p_wrapped: CK_BYTE_PTR,
            wrapped_len: CK_ULONG,
            p_template: CK_ATTRIBUTE_PTR,
            count: CK_ULONG,
            ph_key: CK_OBJECT_HANDLE_PTR
        ) [m]
            => keys::unwrap_key(
                m,
                h,
                ffi::InMechanism::new(p_mech),
                unwrapping_key,
                ffi::InBytes::new(p_wrapped, wrapped_len),
                ffi::InTemplate::new(p_template, count),
                ffi::Out::new(ph_key),
            );
        C_DeriveKey = c_derive_key(h: CK_SESSION_HANDLE, p_mech: CK_MECHANISM_PTR, base_key: CK_OBJECT_HANDLE, p_template: CK_ATTRIBUTE_PTR, count: CK_ULONG, ph_key: CK_OBJECT_HANDLE_PTR) [m]
            => keys::derive_key(m, h, ffi::InMechanism::new(p_mech), base_key, ffi::InTemplate::new(p_template, count), ffi::Out::new(ph_key));

        C_SeedRandom = c_seed_random(h: CK_SESSION_HANDLE, p_seed: CK_BYTE_PTR, seed_len: CK_ULONG) [m]
            => random::seed_random(m, h, ffi::InBytes::new(p_seed, seed_len));
        C_GenerateRandom = c_generate_random(h: CK_SESSION_HANDLE, p_out: CK_BYTE_PTR, len: CK_ULONG) [m]
            => random::generate_random(m, h, ffi::OutBytes::new(p_out, len));
    }
    v2_unsupported {
        C_GetOperationState = c_get_operation_state(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG_PTR) => FunctionNotSupported;
        C_SetOperationState = c_set_operation_state(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) => FunctionNotSupported;
        C_DigestEncryptUpdate = c_digest_encrypt_update(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR) => FunctionNotSupported;
        C_DecryptDigestUpdate = c_decrypt_digest_update(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR) => FunctionNotSupported;
        C_SignEncryptUpdate = c_sign_encrypt_update(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR) => FunctionNotSupported;
        C_DecryptVerifyUpdate = c_decrypt_verify_update(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR) => FunctionNotSupported;
        C_GetFunctionStatus = c_get_function_status(CK_SESSION_HANDLE) => FunctionNotParallel;
        C_CancelFunction = c_cancel_function(CK_SESSION_HANDLE) => FunctionNotParallel;
    }
    v3 {
        /// The PKCS#11 3.0 interface list.
        ///
        /// # Safety
        /// `pul_count` is NULL or valid for reads and writes; `p_list` is
        /// NULL or writable for `*pul_count` interfaces.
        #[unsafe(no_mangle)]
        pub C_GetInterfaceList = C_GetInterfaceList(p_list: CK_INTERFACE_PTR, pul_count: CK_ULONG_PTR) [free]
            => ffi::OutList::new(p_list, pul_count).deliver(&INTERFACES.0);
        /// The PKCS#11 3.0 interface lookup.
        ///
        /// # Safety
        /// `p_name` is NULL or a NUL-terminated string; `p_version` is NULL
        /// or readable; `pp_interface` is NULL or writable.
        #[unsafe(no_mangle)]
        pub C_GetInterface = C_GetInterface(p_name: CK_UTF8CHAR_PTR, p_version: CK_VERSION_PTR, pp_interface: CK_INTERFACE_PTR_PTR, flags: CK_FLAGS) [free]
            => get_interface(ffi::InCStr::new(p_name), ffi::InOpt::new(p_version), ffi::Out::new(pp_interface), flags);
    }
    v3_unsupported {
        C_LoginUser = c_login_user(CK_SESSION_HANDLE, CK_USER_TYPE, CK_UTF8CHAR_PTR, CK_ULONG, CK_UTF8CHAR_PTR, CK_ULONG) => FunctionNotSupported;
        C_SessionCancel = c_session_cancel(CK_SESSION_HANDLE, CK_FLAGS) => FunctionNotSupported;
        C_MessageEncryptInit = c_message_encrypt_init(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE) => FunctionNotSupported;
        C_EncryptMessage = c_encrypt_message(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR) => FunctionNotSupported;
        C_EncryptMessageBegin = c_encrypt_message_begin(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG) => FunctionNotSupported;
        C_EncryptMessageNext = c_encrypt_message_next(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR, CK_FLAGS) => FunctionNotSupported;
        C_MessageEncryptFinal = c_message_encrypt_final(CK_SESSION_HANDLE) => FunctionNotSupported;
        C_MessageDecryptInit = c_message_decrypt_init(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE) => FunctionNotSupported;
        C_DecryptMessage = c_decrypt_message(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR) => FunctionNotSupported;
        C_DecryptMessageBegin = c_decrypt_message_begin(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG) => FunctionNotSupported;
        C_DecryptMessageNext = c_decrypt_message_next(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR, CK_FLAGS) => FunctionNotSupported;
        C_MessageDecryptFinal = c_message_decrypt_final(CK_SESSION_HANDLE) => FunctionNotSupported;
        C_MessageSignInit = c_message_sign_init(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE) => FunctionNotSupported;
        C_SignMessage = c_sign_message(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR) => FunctionNotSupported;
        C_SignMessageBegin = c_sign_message_begin(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG) => FunctionNotSupported;
        C_SignMessageNext = c_sign_message_next(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR) => FunctionNotSupported;
        C_MessageSignFinal = c_message_sign_final(CK_SESSION_HANDLE) => FunctionNotSupported;
        C_MessageVerifyInit = c_message_verify_init(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE) => FunctionNotSupported;
        C_VerifyMessage = c_verify_message(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG) => FunctionNotSupported;
        C_VerifyMessageBegin = c_verify_message_begin(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG) => FunctionNotSupported;
        C_VerifyMessageNext = c_verify_message_next(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG) => FunctionNotSupported;
        C_MessageVerifyFinal = c_message_verify_final(CK_SESSION_HANDLE) => FunctionNotSupported;
    }
}

/// The interface name both tables are offered under.
const INTERFACE_NAME: &[u8; 8] = b"PKCS 11\0";

/// The interfaces, newest first, with the version each offers.
struct Interfaces([CK_INTERFACE; 2], [CK_VERSION; 2]);

// SAFETY: the pointers inside point to immutable statics (the name and the
// function tables); nothing ever writes through them.
unsafe impl Sync for Interfaces {}

static INTERFACES: Interfaces = Interfaces(
    [
        CK_INTERFACE {
            pInterfaceName: INTERFACE_NAME.as_ptr().cast_mut(),
            pFunctionList: ptr::addr_of!(FUNCTION_LIST_3_0).cast_mut().cast(),
            flags: 0,
        },
        CK_INTERFACE {
            pInterfaceName: INTERFACE_NAME.as_ptr().cast_mut(),
            pFunctionList: ptr::addr_of!(FUNCTION_LIST).cast_mut().cast(),
            flags: 0,
        },
    ],
    [
        CK_VERSION { major: 3, minor: 0 },
        CK_VERSION {
            major: 2,
            minor: 40,
        },
    ],
);

/// `C_GetFunctionList`: the 2.40 table. Applications must not write to it.
fn get_function_list(out: ffi::Out<CK_FUNCTION_LIST_PTR>) -> Result<()> {
    out.write(ptr::addr_of!(FUNCTION_LIST).cast_mut())
}

/// `C_GetInterface`: "PKCS 11" (or NULL) at version 3.0 (or NULL), else
/// 2.40; interfaces carry no flags, so any requested flag matches nothing.
fn get_interface(
    name: ffi::InCStr,
    version: ffi::InOpt<CK_VERSION>,
    out: ffi::Out<*mut CK_INTERFACE>,
    flags: CK_FLAGS,
) -> Result<()> {
    out.check()?;
    if name
        .read()
        .is_some_and(|n| n.to_bytes() != &INTERFACE_NAME[..7])
    {
        return Err(Error::ArgumentsBad);
    }
    let wanted = version.read();
    let found = INTERFACES
        .0
        .iter()
        .zip(&INTERFACES.1)
        .find(|(iface, v)| {
            wanted.is_none_or(|w| (w.major, w.minor) == (v.major, v.minor))
                && flags & iface.flags == flags
        })
        .ok_or(Error::ArgumentsBad)?;
    out.write(ptr::from_ref(found.0).cast_mut())
}

#[cfg(test)]
mod tests;
