//! Second-application probe for object namespaces: another executable, so
//! another application to a policy that names it. Opens an RW session on
//! the token, says `ready: yes`, then follows one instruction per line of
//! standard input and answers each with one `name: value` line:
//!
//! - `login PIN`: `C_Login(CKU_USER)`, answered `login: CKR_...`;
//! - `labels`: every object a search with an empty template finds,
//!   answered `labels: L1,L2,...` (sorted `CKA_LABEL`s);
//! - `read LABEL`: the `CKA_VALUE` of every object labelled `LABEL` it
//!   finds, answered `read: HEX,...` (`read: ` when it finds none);
//! - `destroy LABEL`: `C_DestroyObject` on every object labelled `LABEL` it
//!   finds, answered `destroy: N` (how many were destroyed);
//! - `guess N`: `C_GetAttributeValue(CKA_LABEL)` and `C_DestroyObject` on
//!   every object handle from 1 to N, answered `guess: L1,...;D` (the
//!   labels it could read and how many handles it destroyed);
//! - `create LABEL HEX`: `C_CreateObject` of a private token data object,
//!   answered `create: CKR_...`.
//!
//! It ends at the end of its input. PINs travel on standard input, never
//! in arguments. Environment: `KEYWARD_MODULE`, `KEYWARD_TOKEN`.

use std::io::BufRead;

use cryptoki_sys::*;
use keyward_tests::p11::{hex, unhex};
use keyward_tests::probe::side::{fail, report, setup, token_slot};
use keyward_tests::raw::{rv_name, Attr, AttrReq, Raw};

/// Every object session `h` finds with `template`.
fn find(raw: &Raw, h: CK_SESSION_HANDLE, template: &[Attr]) -> Vec<CK_OBJECT_HANDLE> {
    setup("C_FindObjectsInit", raw.find_objects_init(h, template));
    let (rv, found) = raw.find_objects(h, 1024);
    setup("C_FindObjects", rv);
    setup("C_FindObjectsFinal", raw.find_objects_final(h));
    found
}

/// Attribute `type_` of object `o`, when it can be read.
fn attribute(
    raw: &Raw,
    h: CK_SESSION_HANDLE,
    o: CK_OBJECT_HANDLE,
    type_: CK_ULONG,
) -> Option<Vec<u8>> {
    let mut req = [AttrReq::with_cap(type_, 65536)];
    (raw.get_attributes(h, o, &mut req) == CKR_OK).then(|| req[0].value.clone())
}

fn main() {
    let (raw, slot) = token_slot();
    let (rv, h) = raw.open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION);
    setup("C_OpenSession", rv);
    report("ready", "yes");
    let by_label = |label: &str| vec![Attr::Bytes(CKA_LABEL, label.as_bytes().to_vec())];
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap_or_else(|e| fail(&format!("read standard input: {e}")));
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            ["login", pin] => report("login", &rv_name(raw.login(h, CKU_USER, pin.as_bytes()))),
            ["labels"] => {
                let mut labels: Vec<String> = find(&raw, h, &[])
                    .into_iter()
                    .filter_map(|o| attribute(&raw, h, o, CKA_LABEL))
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .collect();
                labels.sort();
                report("labels", &labels.join(","));
            }
            ["read", label] => {
                let values: Vec<String> = find(&raw, h, &by_label(label))
                    .into_iter()
                    .filter_map(|o| attribute(&raw, h, o, CKA_VALUE))
                    .map(|v| hex(&v))
                    .collect();
                report("read", &values.join(","));
            }
            ["destroy", label] => {
                let n = find(&raw, h, &by_label(label))
                    .into_iter()
                    .filter(|&o| raw.destroy_object(h, o) == CKR_OK)
                    .count();
                report("destroy", &n.to_string());
            }
            ["guess", n] => {
                let n: CK_OBJECT_HANDLE = n.parse().unwrap_or_else(|_| fail("guess N"));
                let mut labels = Vec::new();
                let mut destroyed = 0;
                for o in 1..=n {
                    if let Some(l) = attribute(&raw, h, o, CKA_LABEL) {
                        labels.push(String::from_utf8_lossy(&l).into_owned());
                    }
                    if raw.destroy_object(h, o) == CKR_OK {
                        destroyed += 1;
                    }
                }
                report("guess", &format!("{};{destroyed}", labels.join(",")));
            }
            ["create", label, value] => {
                let (rv, _) = raw.create_object(
                    h,
                    &[
                        Attr::Ulong(CKA_CLASS, CKO_DATA),
                        Attr::Bool(CKA_TOKEN, true),
                        Attr::Bool(CKA_PRIVATE, true),
                        Attr::Bytes(CKA_LABEL, label.as_bytes().to_vec()),
                        Attr::Bytes(CKA_VALUE, unhex(value)),
                    ],
                );
                report("create", &rv_name(rv));
            }
            _ => fail(&format!("unknown instruction {line:?}")),
        }
    }
}
