//! Second-process probe for what another process can *see*: given the
//! labels of the first process's session objects (argv 1: a public one,
//! argv 2: a private one) and of a public token object (argv 3), checks that
//! this process is not logged in because the first one is, does not find the
//! first one's session objects (before or after its own login), does find
//! the token object (so the search itself works), and that its own logout
//! leaves the first process alone (the test checks that part).
//! Prints one line per check and exits non-zero when any check fails.
//!
//! Environment: `KEYWARD_MODULE`, `KEYWARD_TOKEN`, `KEYWARD_PIN`.

use cryptoki_sys::*;
use keyward_tests::probe::side::env;
use keyward_tests::raw::{rv_name, Attr, AttrReq, InitArgs, Out, Raw};

struct Checks {
    failed: u32,
}

impl Checks {
    fn rv(&mut self, what: &str, got: CK_RV, want: CK_RV) {
        let ok = got == want;
        println!(
            "{}: {what}: got {}, want {}",
            if ok { "ok" } else { "FAIL" },
            rv_name(got),
            rv_name(want)
        );
        if !ok {
            self.failed += 1;
        }
    }
    fn truth(&mut self, what: &str, ok: bool) {
        println!("{}: {what}", if ok { "ok" } else { "FAIL" });
        if !ok {
            self.failed += 1;
        }
    }
}

/// The handles a search finds (all of them, in batches of 16).
fn find(
    raw: &Raw,
    c: &mut Checks,
    h: CK_SESSION_HANDLE,
    template: &[Attr],
) -> Vec<CK_OBJECT_HANDLE> {
    c.rv(
        "C_FindObjectsInit",
        raw.find_objects_init(h, template),
        CKR_OK,
    );
    let mut all = Vec::new();
    loop {
        let (rv, got) = raw.find_objects(h, 16);
        c.rv("C_FindObjects", rv, CKR_OK);
        if rv != CKR_OK || got.is_empty() {
            break;
        }
        all.extend(got);
    }
    c.rv("C_FindObjectsFinal", raw.find_objects_final(h), CKR_OK);
    all
}

fn labels(raw: &Raw, h: CK_SESSION_HANDLE, objects: &[CK_OBJECT_HANDLE]) -> Vec<String> {
    objects
        .iter()
        .map(|&o| {
            let mut r = [AttrReq::with_cap(CKA_LABEL, 256)];
            let rv = raw.get_attributes(h, o, &mut r);
            if rv == CKR_OK {
                String::from_utf8_lossy(&r[0].value).into_owned()
            } else {
                format!("<{}>", rv_name(rv))
            }
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [public_label, private_label, token_label] = &args[..] else {
        panic!("usage: visibility_probe PUBLIC_SESSION_LABEL PRIVATE_SESSION_LABEL TOKEN_LABEL");
    };
    let raw = Raw::load(&env("KEYWARD_MODULE"));
    let token = env("KEYWARD_TOKEN");
    let pin = env("KEYWARD_PIN");
    let mut c = Checks { failed: 0 };
    c.rv(
        "C_Initialize",
        raw.initialize(InitArgs::Flags(CKF_OS_LOCKING_OK)),
        CKR_OK,
    );
    let list = raw.slot_list(true, Out::Cap(64));
    let slot = list
        .data
        .into_iter()
        .find(|&s| String::from_utf8_lossy(&raw.token_info(s).1.label).trim_end() == token)
        .expect("the token is not in the slot list");
    let (rv, h) = raw.open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION);
    c.rv("C_OpenSession", rv, CKR_OK);
    let (rv, info) = raw.session_info(h);
    c.rv("C_GetSessionInfo", rv, CKR_OK);
    c.truth(
        &format!(
            "a new session is public although the other process is logged in (state {})",
            info.state
        ),
        info.state == CKS_RW_PUBLIC_SESSION,
    );
    // SoftHSM2 2.6.1 direct answers CKR_OK to C_Logout without a login;
    // keyward answers the spec's code.
    let not_logged_in = if keyward_tests::harness::direct_mode() {
        CKR_OK
    } else {
        CKR_USER_NOT_LOGGED_IN
    };
    c.rv("C_Logout before any login", raw.logout(h), not_logged_in);
    let private_data = [
        Attr::Ulong(CKA_CLASS, CKO_DATA),
        Attr::Bool(CKA_TOKEN, false),
        Attr::Bool(CKA_PRIVATE, true),
        Attr::Bytes(CKA_VALUE, b"x".to_vec()),
    ];
    c.rv(
        "C_CreateObject(private) without own login",
        raw.create_object(h, &private_data).0,
        CKR_USER_NOT_LOGGED_IN,
    );

    for phase in ["before login", "after own login"] {
        if phase == "after own login" {
            c.rv("C_Login", raw.login(h, CKU_USER, pin.as_bytes()), CKR_OK);
        }
        for label in [public_label, private_label] {
            let found = find(
                &raw,
                &mut c,
                h,
                &[Attr::Bytes(CKA_LABEL, label.as_bytes().to_vec())],
            );
            c.truth(
                &format!("{phase}: no object labelled {label:?} found ({found:?})"),
                found.is_empty(),
            );
        }
        let found = find(
            &raw,
            &mut c,
            h,
            &[Attr::Bytes(CKA_LABEL, token_label.as_bytes().to_vec())],
        );
        c.truth(
            &format!("{phase}: the public token object {token_label:?} is found ({found:?})"),
            found.len() == 1,
        );
        let all = find(&raw, &mut c, h, &[]);
        let seen = labels(&raw, h, &all);
        c.truth(
            &format!("{phase}: an empty template finds none of the other process's session objects ({seen:?})"),
            !seen.iter().any(|l| l == public_label || l == private_label),
        );
        let sessions_only = find(&raw, &mut c, h, &[Attr::Bool(CKA_TOKEN, false)]);
        c.truth(
            &format!("{phase}: no session objects at all in this process ({sessions_only:?})"),
            sessions_only.is_empty(),
        );
    }
    c.rv("C_Logout of the own login", raw.logout(h), CKR_OK);
    c.rv("C_Finalize", raw.finalize(), CKR_OK);
    std::process::exit(if c.failed == 0 { 0 } else { 1 });
}
