//! What `keyward cert import` judges of a certificate file (PEM or DER,
//! one certificate), and what `cert request` / `cert self-sign` judge of
//! their subject and subject alternative names. Invariants: no panic; an
//! accepted certificate, encoded again, is accepted as the same
//! certificate.
#![no_main]

use keyward_agent::lifecycle::certs::{judge_certificate_file, judge_request_arguments};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(der) = judge_certificate_file(data) {
        let again = judge_certificate_file(&der).expect("a re-encoded certificate is accepted");
        assert_eq!(
            again, der,
            "decode -> encode -> decode changed the certificate"
        );
    }
    if let Ok(text) = std::str::from_utf8(data) {
        // First line: the subject; the others: one subject alternative
        // name each.
        let mut lines = text.lines();
        let subject = lines.next().unwrap_or_default();
        let sans: Vec<String> = lines.map(str::to_owned).collect();
        let _ = judge_request_arguments(subject, &sans, data);
    } else {
        let _ = judge_request_arguments("", &[], data);
    }
});
