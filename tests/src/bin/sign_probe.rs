//! Second-process probe that signs: logs in, finds the private key
//! labelled argv 1, and signs a fixed digest with `CKM_ECDSA` (each
//! signature a `C_SignInit` and a `C_Sign`), argv 2 times (`0`: until a
//! signature fails or a line, or the end, arrives on standard input),
//! sleeping argv 3 milliseconds between signatures. Every run stops after
//! [`LIMIT`] at the latest.
//!
//! A copy of this binary at another path is another executable to the
//! agent: `keyward report` tells them apart.
//!
//! Output, one `name: value` line each: `ready` (logged in, key found),
//! then `signed` (how many signatures succeeded) and `last` (the `CKR_*`
//! name of the last answer, `CKR_OK` when every one succeeded). Setup
//! failures print `setup FAIL: ...` and exit 2.
//!
//! Environment: `KEYWARD_MODULE`, `KEYWARD_TOKEN`, `KEYWARD_PIN`.

use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use keyward_tests::probe::side::{env, find_one, report, setup, token_slot};
use keyward_tests::raw::{rv_name, Mech, Out};

/// What the probe signs (an ECDSA "digest").
const DIGEST: [u8; 32] = [0x3c; 32];
/// The longest a run lasts.
const LIMIT: Duration = Duration::from_secs(120);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [label, count, interval] = &args[..] else {
        panic!("usage: sign_probe LABEL COUNT INTERVAL_MS");
    };
    let count: u64 = count.parse().expect("COUNT is a number");
    let interval = Duration::from_millis(interval.parse().expect("INTERVAL_MS is a number"));
    let stop = Arc::new(AtomicBool::new(false));
    if count == 0 {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            stop.store(true, Ordering::SeqCst);
        });
    }

    let (raw, slot) = token_slot();
    let pin = env("KEYWARD_PIN");
    let (rv, h) = raw.open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION);
    setup("C_OpenSession", rv);
    setup("C_Login", raw.login(h, CKU_USER, pin.as_bytes()));
    let key = find_one(&raw, h, label, CKO_PRIVATE_KEY);
    report("ready", "signing");

    let ecdsa = Mech::plain(CKM_ECDSA);
    let started = Instant::now();
    let mut signed = 0u64;
    let mut last = CKR_OK;
    while (count == 0 || signed < count)
        && !stop.load(Ordering::SeqCst)
        && started.elapsed() < LIMIT
    {
        last = raw.sign_init(h, &ecdsa, key);
        if last == CKR_OK {
            last = raw.sign(h, &DIGEST, Out::Cap(256)).rv;
        }
        if last != CKR_OK {
            break;
        }
        signed += 1;
        if !interval.is_zero() {
            std::thread::sleep(interval);
        }
    }
    report("signed", &signed.to_string());
    report("last", &rv_name(last));
    let _ = raw.finalize();
}
