//! General-purpose functions: C_Initialize argument handling, calls before
//! initialisation, C_GetInfo, the function list and the 3.0 interfaces, the
//! exported symbols, and functions every module must answer without crashing.

use cryptoki_sys::*;
use keyward_tests::keyward_test;
use keyward_tests::p11::{load, Ctx};
use keyward_tests::raw::{InitArgs, Out};
use keyward_tests::{assert_rv, tools};

keyward_test!(fn calls_before_initialize_are_refused(tb) {
    let (_p11, raw) = load(&tb);
    let nip = CKR_CRYPTOKI_NOT_INITIALIZED;
    assert_rv!(raw.get_info().0, nip);
    assert_rv!(raw.slot_list(false, Out::Null).rv, nip);
    assert_rv!(raw.slot_info(0).0, nip);
    assert_rv!(raw.token_info(0).0, nip);
    assert_rv!(raw.mechanism_list(0, Out::Null).rv, nip);
    assert_rv!(raw.open_session(0, CKF_SERIAL_SESSION).0, nip);
    assert_rv!(raw.close_all_sessions(0), nip);
    assert_rv!(raw.session_info(1).0, nip);
    assert_rv!(raw.generate_random(1, 8).0, nip);
    assert_rv!(raw.finalize(), nip);
});

keyward_test!(fn initialize_argument_checks(tb) {
    let (_p11, raw) = load(&tb);
    assert_rv!(raw.initialize(InitArgs::Reserved), CKR_ARGUMENTS_BAD, "pReserved non-NULL");
    assert_rv!(raw.initialize(InitArgs::PartialMutex), CKR_ARGUMENTS_BAD, "only some mutex functions");
    assert_rv!(
        raw.initialize(InitArgs::AllMutex(0)),
        CKR_CANT_LOCK,
        "application mutexes without CKF_OS_LOCKING_OK"
    );
    // Nothing above may have initialised the library.
    assert_rv!(raw.get_info().0, CKR_CRYPTOKI_NOT_INITIALIZED);

    // All mutex functions with CKF_OS_LOCKING_OK: the library may use its own.
    assert_rv!(raw.initialize(InitArgs::AllMutex(CKF_OS_LOCKING_OK)), CKR_OK);
    assert_rv!(raw.finalize(), CKR_OK);

    assert_rv!(raw.initialize(InitArgs::Null), CKR_OK, "C_Initialize(NULL)");
    assert_rv!(raw.initialize(InitArgs::Null), CKR_CRYPTOKI_ALREADY_INITIALIZED);
    assert_rv!(raw.initialize(InitArgs::Flags(CKF_OS_LOCKING_OK)), CKR_CRYPTOKI_ALREADY_INITIALIZED);
    assert_rv!(raw.finalize_reserved(), CKR_ARGUMENTS_BAD, "C_Finalize(non-NULL)");
    assert_rv!(raw.finalize(), CKR_OK);
    assert_rv!(raw.finalize(), CKR_CRYPTOKI_NOT_INITIALIZED, "second C_Finalize");

    // Initialise again after finalising: everything works again.
    assert_rv!(raw.initialize(InitArgs::Flags(CKF_OS_LOCKING_OK)), CKR_OK);
    let slots = raw.slot_list(true, Out::Cap(16));
    assert_rv!(slots.rv, CKR_OK);
    assert!(!slots.data.is_empty(), "no slot with a token after re-initialisation");
    let (rv, h) = raw.open_session(slots.data[0], CKF_SERIAL_SESSION);
    assert_rv!(rv, CKR_OK);
    assert_rv!(raw.close_session(h), CKR_OK);
    assert_rv!(raw.finalize(), CKR_OK);
});

keyward_test!(fn get_info(tb) {
    let ctx = Ctx::new(&tb);
    let (rv, info) = ctx.raw.get_info();
    assert_rv!(rv, CKR_OK);
    assert!(
        (info.cryptokiVersion.major, info.cryptokiVersion.minor) == (2, 40)
            || info.cryptokiVersion.major == 3,
        "cryptokiVersion {}.{}",
        info.cryptokiVersion.major,
        info.cryptokiVersion.minor
    );
    assert_eq!(info.flags, 0, "CK_INFO.flags must be 0");
    for (name, field) in [("manufacturerID", &info.manufacturerID[..]), ("libraryDescription", &info.libraryDescription[..])] {
        assert!(!field.contains(&0), "{name} must be blank-padded, not NUL-terminated: {field:?}");
        assert!(field.iter().any(|&b| b != b' '), "{name} is empty");
    }
    assert_rv!(ctx.raw.get_info_null(), CKR_ARGUMENTS_BAD);
    let lib = ctx.p11.get_library_info().expect("cryptoki get_library_info");
    assert!(!lib.manufacturer_id().is_empty());
});

keyward_test!(fn function_list_is_complete(tb) {
    let (_p11, raw) = load(&tb);
    let missing = raw.null_entries();
    assert!(missing.is_empty(), "NULL entries in the function list: {missing:?}");
    let v = raw.list_version();
    assert_eq!((v.major, v.minor), (2, 40), "C_GetFunctionList returns the 2.40 table");
    assert_rv!(raw.get_function_list_null(), CKR_ARGUMENTS_BAD, "C_GetFunctionList(NULL)");
});

keyward_test!(fn interfaces(tb) {
    let (_p11, raw) = load(&tb);
    let (rv_count, _, list) = raw.interface_list();
    assert_rv!(rv_count, CKR_OK, "C_GetInterfaceList count");
    assert!(
        list.iter().any(|(n, v, _)| n == "PKCS 11" && v.major == 3 && v.minor == 0),
        "no \"PKCS 11\" 3.0 interface in {list:?}"
    );
    for (n, v, _) in &list {
        assert_eq!(n, "PKCS 11", "unexpected interface name");
        assert!(v.major == 3 || (v.major, v.minor) == (2, 40), "interface version {}.{}", v.major, v.minor);
    }
    let (rv_null, rv_short, count) = raw.interface_list_bad();
    assert_rv!(rv_null, CKR_ARGUMENTS_BAD, "C_GetInterfaceList(NULL, NULL)");
    assert_rv!(rv_short, CKR_BUFFER_TOO_SMALL, "C_GetInterfaceList with room for 0");
    assert_eq!(count as usize, list.len(), "count after BUFFER_TOO_SMALL");

    let (rv, got) = raw.get_interface(Some("PKCS 11"), Some((3, 0)));
    assert_rv!(rv, CKR_OK, "C_GetInterface(\"PKCS 11\", 3.0)");
    let (name, v) = got.expect("interface");
    assert_eq!(name, "PKCS 11");
    assert_eq!((v.major, v.minor), (3, 0));
    let (rv, got) = raw.get_interface(None, None);
    assert_rv!(rv, CKR_OK, "C_GetInterface(NULL, NULL): the default interface");
    assert_eq!(got.expect("interface").0, "PKCS 11");
    let (rv, got) = raw.get_interface(Some("PKCS 11"), None);
    assert_rv!(rv, CKR_OK, "C_GetInterface(\"PKCS 11\", NULL)");
    assert!(got.is_some());
    let (rv, _) = raw.get_interface(Some("Vendor XYZ"), None);
    assert!(rv != CKR_OK, "an unknown interface name must not be found");
    let (rv, _) = raw.get_interface(Some("PKCS 11"), Some((9, 9)));
    assert!(rv != CKR_OK, "an unknown interface version must not be found");
    assert_rv!(raw.get_interface_null(), CKR_ARGUMENTS_BAD, "C_GetInterface(.., NULL)");
});

keyward_test!(fn exports_only_three_symbols(tb) {
    let nm = tools::require_tool("nm", "binutils");
    let out = tools::run_ok(std::process::Command::new(nm).args(["-D", "--defined-only"]).arg(&tb.module));
    let mut symbols: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|s| !s.is_empty())
        .collect();
    symbols.sort();
    assert_eq!(
        symbols,
        vec!["C_GetFunctionList", "C_GetInterface", "C_GetInterfaceList"],
        "dynamic symbols defined by {}",
        tb.module
    );
});

keyward_test!(fn legacy_and_unsupported_functions_answer(tb) {
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let h = s.handle();
    // Legacy parallel-function calls: the spec fixes the answer.
    assert_rv!(ctx.raw.get_function_status(h), CKR_FUNCTION_NOT_PARALLEL);
    assert_rv!(ctx.raw.cancel_function(h), CKR_FUNCTION_NOT_PARALLEL);
    // Non-blocking slot events: nothing happened, or not supported.
    // keyward implements it; SoftHSM2 direct may not.
    let rv = ctx.raw.wait_for_slot_event_nonblocking();
    if tb.direct {
        assert!(
            rv == CKR_NO_EVENT || rv == CKR_FUNCTION_NOT_SUPPORTED,
            "C_WaitForSlotEvent(CKF_DONT_BLOCK): {}",
            keyward_tests::raw::rv_name(rv)
        );
    } else {
        assert_rv!(rv, CKR_NO_EVENT, "C_WaitForSlotEvent(CKF_DONT_BLOCK)");
    }
    // Operation state with no operation, dual functions without operations:
    // an error, never a crash, and the session keeps working.
    let rv = ctx.raw.get_operation_state_len(h);
    assert!(rv != CKR_OK || tb.direct, "C_GetOperationState with no operation: {}", keyward_tests::raw::rv_name(rv));
    let rv = ctx.raw.digest_encrypt_update_len(h, b"abc");
    if tb.direct {
        assert!(
            rv == CKR_OPERATION_NOT_INITIALIZED || rv == CKR_FUNCTION_NOT_SUPPORTED,
            "C_DigestEncryptUpdate without operations: {}",
            keyward_tests::raw::rv_name(rv)
        );
    } else {
        // keyward does not offer the dual functions.
        assert_rv!(rv, CKR_FUNCTION_NOT_SUPPORTED, "C_DigestEncryptUpdate");
    }
    assert_rv!(ctx.raw.generate_random(h, 16).0, CKR_OK, "the session still works");
});
