//! Fork probe (single-threaded on purpose): initialises the module, opens a
//! logged-in session, forks. In the child every call must answer
//! `CKR_CRYPTOKI_NOT_INITIALIZED` until `C_Initialize`, after which a new
//! session works, also when the child cleared `KEYWARD_SOCKET` from its
//! environment first; the parent keeps working. Prints one line per check and
//! exits non-zero when any check fails.
//!
//! Environment: `KEYWARD_MODULE`, `KEYWARD_TOKEN`, `KEYWARD_PIN`.

use cryptoki_sys::*;
use keyward_tests::raw::{rv_name, InitArgs, Raw};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

struct Checks {
    who: &'static str,
    failed: u32,
}

impl Checks {
    fn rv(&mut self, what: &str, got: CK_RV, want: CK_RV) {
        let ok = got == want;
        println!(
            "{} {}: {what}: got {}, want {}",
            self.who,
            if ok { "ok" } else { "FAIL" },
            rv_name(got),
            rv_name(want)
        );
        if !ok {
            self.failed += 1;
        }
    }
    fn truth(&mut self, what: &str, ok: bool) {
        println!("{} {}: {what}", self.who, if ok { "ok" } else { "FAIL" });
        if !ok {
            self.failed += 1;
        }
    }
}

fn token_slot(raw: &Raw, label: &str) -> Option<CK_SLOT_ID> {
    let list = raw.slot_list(true, Out::Cap(64));
    if list.rv != CKR_OK {
        return None;
    }
    list.data.into_iter().find(|&s| {
        let (rv, info) = raw.token_info(s);
        rv == CKR_OK && String::from_utf8_lossy(&info.label).trim_end() == label
    })
}

use keyward_tests::probe::side::env;
use keyward_tests::raw::Out;

fn main() {
    let module = env("KEYWARD_MODULE");
    let label = env("KEYWARD_TOKEN");
    let pin = env("KEYWARD_PIN");
    let raw = Raw::load(&module);
    let mut c = Checks {
        who: "parent",
        failed: 0,
    };
    c.rv(
        "C_Initialize",
        raw.initialize(InitArgs::Flags(CKF_OS_LOCKING_OK)),
        CKR_OK,
    );
    let slot = token_slot(&raw, &label).expect("the token is not in the slot list");
    let (rv, h) = raw.open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION);
    c.rv("C_OpenSession", rv, CKR_OK);
    c.rv("C_Login", raw.login(h, CKU_USER, pin.as_bytes()), CKR_OK);
    c.rv(
        "C_GenerateRandom before fork",
        raw.generate_random(h, 16).0,
        CKR_OK,
    );
    if c.failed > 0 {
        std::process::exit(1);
    }

    // SAFETY: this probe is single-threaded up to here apart from whatever
    // the module started; the child only calls the module (which is what is
    // under test), prints, and leaves with _exit.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let mut c = Checks {
                who: "child",
                failed: 0,
            };
            let nip = CKR_CRYPTOKI_NOT_INITIALIZED;
            c.rv("C_GetInfo", raw.get_info().0, nip);
            c.rv("C_GetSlotList", raw.slot_list(false, Out::Null).rv, nip);
            c.rv("C_GetTokenInfo", raw.token_info(slot).0, nip);
            c.rv("C_GetSessionInfo(inherited)", raw.session_info(h).0, nip);
            c.rv(
                "C_GenerateRandom(inherited)",
                raw.generate_random(h, 16).0,
                nip,
            );
            c.rv(
                "C_Login(inherited)",
                raw.login(h, CKU_USER, pin.as_bytes()),
                nip,
            );
            c.rv(
                "C_OpenSession",
                raw.open_session(slot, CKF_SERIAL_SESSION).0,
                nip,
            );
            c.rv("C_CloseSession(inherited)", raw.close_session(h), nip);
            c.rv("C_Finalize", raw.finalize(), nip);
            // A server that clears its workers' environment after fork
            // (nginx keeps only TZ): the child still reaches the agent its
            // parent was configured for.
            std::env::remove_var("KEYWARD_SOCKET");
            c.rv(
                "C_Initialize in the child",
                raw.initialize(InitArgs::Flags(CKF_OS_LOCKING_OK)),
                CKR_OK,
            );
            c.rv(
                "C_GetSessionInfo(inherited) after re-init",
                raw.session_info(h).0,
                CKR_SESSION_HANDLE_INVALID,
            );
            match token_slot(&raw, &label) {
                Some(slot) => {
                    let (rv, h2) = raw.open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION);
                    c.rv("C_OpenSession after re-init", rv, CKR_OK);
                    c.rv(
                        "C_Login after re-init",
                        raw.login(h2, CKU_USER, pin.as_bytes()),
                        CKR_OK,
                    );
                    let (rv, bytes) = raw.generate_random(h2, 32);
                    c.rv("C_GenerateRandom after re-init", rv, CKR_OK);
                    c.truth(
                        "random bytes are not all zero",
                        bytes.iter().any(|&b| b != 0),
                    );
                    let (rv, info) = raw.session_info(h2);
                    c.rv("C_GetSessionInfo after re-init", rv, CKR_OK);
                    c.truth(
                        "new session is RW user",
                        info.state == CKS_RW_USER_FUNCTIONS,
                    );
                    c.rv("C_Finalize in the child", raw.finalize(), CKR_OK);
                }
                None => c.truth("the token is in the slot list after re-init", false),
            }
            use std::io::Write;
            let _ = std::io::stdout().flush();
            // SAFETY: _exit ends the child without running the parent's
            // atexit handlers or destructors twice.
            unsafe { libc::_exit(if c.failed == 0 { 0 } else { 1 }) };
        }
        ForkResult::Parent { child } => {
            let status = waitpid(child, None).expect("waitpid");
            c.truth(
                &format!("child passed its checks ({status:?})"),
                matches!(status, WaitStatus::Exited(_, 0)),
            );
            let (rv, info) = raw.session_info(h);
            c.rv("C_GetSessionInfo after the child", rv, CKR_OK);
            c.truth(
                "parent session is still RW user",
                info.state == CKS_RW_USER_FUNCTIONS,
            );
            c.rv(
                "C_GenerateRandom after the child",
                raw.generate_random(h, 16).0,
                CKR_OK,
            );
            let (rv, h3) = raw.open_session(slot, CKF_SERIAL_SESSION);
            c.rv("C_OpenSession in the parent after the child", rv, CKR_OK);
            c.rv("C_CloseSession", raw.close_session(h3), CKR_OK);
            c.rv("C_Finalize", raw.finalize(), CKR_OK);
            std::process::exit(if c.failed == 0 { 0 } else { 1 });
        }
    }
}
