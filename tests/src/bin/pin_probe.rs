//! Second-process probe for PIN tests: another executable, so another
//! application to a policy that names it. Opens an RW session on the
//! token, says `ready: yes`, then follows one instruction per line of
//! standard input and answers each with a `name: CKR_*` line:
//!
//! - `login PIN`: `C_Login(CKU_USER)`, answered `login: ...`;
//! - `logout`: `C_Logout`, answered `logout: ...`;
//! - `setpin OLD NEW`: `C_SetPIN`, answered `setpin: ...`.
//!
//! It ends at the end of its input. PINs travel on standard input, never
//! in arguments. Environment: `KEYWARD_MODULE`, `KEYWARD_TOKEN`.

use std::io::BufRead;

use cryptoki_sys::*;
use keyward_tests::probe::side::{fail, report, setup, token_slot};
use keyward_tests::raw::rv_name;

fn main() {
    let (raw, slot) = token_slot();
    let (rv, h) = raw.open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION);
    setup("C_OpenSession", rv);
    report("ready", "yes");
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap_or_else(|e| fail(&format!("read standard input: {e}")));
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            ["login", pin] => report("login", &rv_name(raw.login(h, CKU_USER, pin.as_bytes()))),
            ["logout"] => report("logout", &rv_name(raw.logout(h))),
            ["setpin", old, new] => report(
                "setpin",
                &rv_name(raw.set_pin(h, old.as_bytes(), new.as_bytes())),
            ),
            _ => fail(&format!("unknown instruction {line:?}")),
        }
    }
}
