//! PyKCS11 (Debian's python3-pykcs11) as a scripting client of the module:
//! a short script lists the slots, logs in, finds a key by its label, signs
//! and verifies (EC P-256 and RSA-2048); a key the application may only
//! verify with gives the script the token's CKR code as an exception it
//! can catch, and a key without a grant is not found. The PIN reaches the
//! script through its environment.

use std::process::Command;

use keyward_tests::admin::keyward_ok;
use keyward_tests::clients::{
    install_clients_policy, managed_key, system_python, GRANTED, HIDDEN, VERIFY_ONLY,
};
use keyward_tests::tools::{describe, output};
use keyward_tests::{keyward_test, Env};

/// Signs with the key labelled argv[1] and verifies with its public key.
/// Exit 0: verified; 3: the token refused (prints the CKR name); 4: no
/// such key; anything else is a failure of the script.
const SCRIPT: &str = r#"
import hashlib, os, sys
import PyKCS11
from PyKCS11 import LowLevel as LL

label = sys.argv[1]
lib = PyKCS11.PyKCS11Lib()
lib.load(os.environ["KEYWARD_MODULE"])
slot = None
for s in lib.getSlotList(tokenPresent=True):
    token = lib.getTokenInfo(s).label.strip()
    print("slot", s, "token", token)
    if token == os.environ["KEYWARD_TOKEN"]:
        slot = s
if slot is None:
    sys.exit("no slot has the token")
session = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
session.login(os.environ["KEYWARD_TEST_PIN"])

def one(cls):
    found = session.findObjects([(PyKCS11.CKA_CLASS, cls), (PyKCS11.CKA_LABEL, label)])
    if not found:
        print("not found:", label)
        sys.exit(4)
    return found[0]

private = one(PyKCS11.CKO_PRIVATE_KEY)
public = one(PyKCS11.CKO_PUBLIC_KEY)
key_type = session.getAttributeValue(private, [PyKCS11.CKA_KEY_TYPE])[0]
data = b"signed by PyKCS11 through keyward"
if key_type == PyKCS11.CKK_EC:
    mechanism = PyKCS11.Mechanism(PyKCS11.CKM_ECDSA, None)
    message = hashlib.sha256(data).digest()
else:
    mechanism = PyKCS11.Mechanism(PyKCS11.CKM_SHA256_RSA_PKCS, None)
    message = data
try:
    signature = bytes(session.sign(private, message, mechanism))
except PyKCS11.PyKCS11Error as e:
    print("refused:", PyKCS11.CKR[e.value])
    session.logout()
    session.closeSession()
    sys.exit(3)
if not session.verify(public, message, signature, mechanism):
    sys.exit("the signature does not verify")
print("verified", len(signature), "bytes")
session.logout()
session.closeSession()
"#;

/// Runs the script on the key labelled `label`; its exit code and output.
fn script(tb: &Env, label: &str) -> (Option<i32>, String) {
    let python = system_python("PyKCS11", "python3-pykcs11");
    let path = tb.path("sign.py");
    std::fs::write(&path, SCRIPT).expect("write sign.py");
    let mut c = Command::new(python);
    c.arg(&path)
        .arg(label)
        .env("KEYWARD_MODULE", &tb.module)
        .env("KEYWARD_TOKEN", &tb.token)
        .env("KEYWARD_TEST_PIN", &tb.pin);
    let out = output(&mut c);
    (out.status.code(), describe(&c, &out))
}

keyward_test!(fn a_pykcs11_script_signs_and_verifies_with_token_keys(tb) {
    install_clients_policy(&tb);
    managed_key(&tb, "py-ec", GRANTED, "ec:p256");
    managed_key(&tb, "py-rsa", GRANTED, "rsa:2048");
    for (label, size) in [("py-ec", "64 bytes"), ("py-rsa", "256 bytes")] {
        let (code, text) = script(&tb, label);
        assert_eq!(code, Some(0), "{text}");
        assert!(text.contains(&format!("verified {size}")), "{text}");
        assert!(text.contains(&format!("token {}", tb.token)), "the script lists the slots: {text}");
    }
});

keyward_test!(fn a_pykcs11_script_sees_the_refusal_as_a_ckr_code(tb) {
    install_clients_policy(&tb);
    managed_key(&tb, "py-verify-only", VERIFY_ONLY, "ec:p256");
    managed_key(&tb, "py-hidden", HIDDEN, "ec:p256");
    let (code, text) = script(&tb, "py-verify-only");
    assert_eq!(code, Some(3), "the script catches the refusal: {text}");
    assert!(text.contains("refused: CKR_"), "{text}");
    assert!(!text.contains("Traceback"), "{text}");
    let trail = keyward_ok(&tb, &["--json", "audit", "query", "--key", "py-verify-only"], 0);
    let refused = trail
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .find(|r| r["operation"] == "sign" && r["kind"] == "refusal");
    let refused = refused.unwrap_or_else(|| panic!("no refused signature on the trail:\n{trail}"));
    // The interpreter binary is the process keyward sees.
    let exe = refused["exe"].as_str().unwrap_or_default();
    assert!(exe.starts_with("/usr/bin/python3"), "{refused}");
    let (code, text) = script(&tb, "py-hidden");
    assert_eq!(code, Some(4), "a key without a grant is not found: {text}");
});
