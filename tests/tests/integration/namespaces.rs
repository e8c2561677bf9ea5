//! Each application's namespace of unmanaged token objects in strict mode:
//! another application sharing the token cannot find, read or destroy the
//! data objects and certificates this one made; they stay this one's after
//! an agent restart; an object made on the backend token behind keyward's
//! back is nobody's. In lab mode the token stays one plain token.

use std::time::Duration;

use cryptoki::object::{Attribute, AttributeType, CertificateType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use keyward_tests::admin::{
    application_toml, backend_token, certificate_of, find, id_of, install_policy, keyward_json,
    keyward_ok, sign_grant_toml, signing_class_toml, two_applications_policy, uid, APPLICATION,
    CERT_SUBJECT,
};
use keyward_tests::json::JsonExt;
use keyward_tests::keyward_test;
use keyward_tests::p11::{expect_err, hex, unhex, Ctx};
use keyward_tests::probe::Probe;

/// Application `other`: this user running `object_probe`.
const OTHER: &str = "other";
const PROBE_WAIT: Duration = Duration::from_secs(60);
const SECRET: &[u8] = b"tester's private data";
/// The token stores certificates without parsing them; any DER will do.
const CERT: &[u8] = &[0x30, 0x03, 0x02, 0x01, 0x07];
const SUBJECT: &[u8] = &[
    0x30, 0x0f, 0x31, 0x0d, 0x30, 0x0b, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x04, b't', b'e', b's',
    b't',
];

/// The `object_probe` binary, by the path the agent sees.
fn probe_exe() -> std::path::PathBuf {
    std::fs::canonicalize(env!("CARGO_BIN_EXE_object_probe")).expect("object_probe is built")
}

/// Strict mode; this process is application `tester`, `object_probe` run
/// by the same user is application `other`; `extra` (whole tables) added.
fn two_applications(tb: &keyward_tests::Env, extra: &str) {
    install_policy(tb, &two_applications_policy("", OTHER, &probe_exe(), extra));
}

/// A running `object_probe`, logged in with the token's user PIN.
struct Other(Probe);

impl Other {
    fn start(tb: &keyward_tests::Env) -> Other {
        let mut p = Probe::start(tb, &probe_exe(), &[]);
        p.value("ready", PROBE_WAIT);
        let mut other = Other(p);
        assert_eq!(other.ask(&format!("login {}", tb.pin), "login"), "CKR_OK");
        other
    }

    /// Sends `line`, returns the answer named `name`.
    fn ask(&mut self, line: &str, name: &str) -> String {
        self.0.say(line);
        self.0.value(name, PROBE_WAIT)
    }

    fn finish(mut self) {
        self.0.close_stdin();
        self.0.wait_success(PROBE_WAIT);
    }
}

fn private_data(label: &str, value: &[u8]) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Value(value.to_vec()),
    ]
}

fn certificate(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::CERTIFICATE),
        Attribute::CertificateType(CertificateType::X_509),
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(vec![0xc0, 0xde]),
        Attribute::Subject(SUBJECT.to_vec()),
        Attribute::Value(CERT.to_vec()),
    ]
}

fn by_label(s: &Session, label: &str) -> Vec<ObjectHandle> {
    s.find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
        .expect("C_FindObjects")
}

fn value_of(s: &Session, h: ObjectHandle) -> Vec<u8> {
    match s
        .get_attributes(h, &[AttributeType::Value])
        .expect("CKA_VALUE")
        .pop()
    {
        Some(Attribute::Value(v)) => v,
        other => panic!("no CKA_VALUE: {other:?}"),
    }
}

/// Every `CKA_LABEL` a search with an empty template finds, sorted.
fn labels(s: &Session) -> Vec<String> {
    let mut labels: Vec<String> = s
        .find_objects(&[])
        .expect("C_FindObjects")
        .into_iter()
        .filter_map(
            |h| match s.get_attributes(h, &[AttributeType::Label]).ok()?.pop() {
                Some(Attribute::Label(l)) => Some(String::from_utf8_lossy(&l).into_owned()),
                _ => None,
            },
        )
        .collect();
    labels.sort();
    labels
}

// Finding 7 (objects): in strict mode, application `other` logged in on
// the same token finds none of `tester`'s token objects, so it can neither
// read nor destroy them (and guessing handles gets it nothing); each sees
// its own; after an agent restart they are still their makers' only; an
// object made on the backend token directly is nobody's.
keyward_test!(fn another_application_cannot_find_read_or_destroy_this_ones_token_objects(tb) {
    tb.require_agent("two applications");
    two_applications(&tb, "");
    let ctx = Ctx::new(&tb);
    {
        let s = ctx.user();
        s.create_object(&private_data("a-secret", SECRET)).expect("C_CreateObject (data)");
        s.create_object(&certificate("a-cert")).expect("C_CreateObject (certificate)");
    }

    let mut other = Other::start(&tb);
    assert_eq!(other.ask("labels", "labels"), "", "other finds tester's objects");
    assert_eq!(other.ask("read a-secret", "read"), "", "other reads tester's private data");
    assert_eq!(other.ask("read a-cert", "read"), "", "other reads tester's certificate");
    assert_eq!(other.ask("destroy a-secret", "destroy"), "0", "other destroys tester's data");
    assert_eq!(other.ask("destroy a-cert", "destroy"), "0", "other destroys tester's certificate");
    assert_eq!(other.ask("guess 64", "guess"), ";0", "other reaches an object by a guessed handle");
    assert_eq!(other.ask(&format!("create b-secret {}", hex(b"other's")), "create"), "CKR_OK");
    assert_eq!(other.ask("labels", "labels"), "b-secret", "other sees its own object");
    assert_eq!(other.ask("read b-secret", "read"), hex(b"other's"));
    other.finish();

    {
        let s = ctx.user();
        assert_eq!(labels(&s), ["a-cert", "a-secret"], "tester sees its own objects, not other's");
        let secret = by_label(&s, "a-secret");
        assert_eq!(secret.len(), 1);
        assert_eq!(value_of(&s, secret[0]), SECRET);
        // A copy is tester's too; a renamed object stays tester's.
        s.copy_object(secret[0], &[Attribute::Label(b"a-copy".to_vec())])
            .expect("C_CopyObject");
        let cert = by_label(&s, "a-cert");
        s.update_attributes(cert[0], &[Attribute::Label(b"a-renamed".to_vec())])
            .expect("C_SetAttributeValue (CKA_LABEL)");
    }

    // Behind keyward's back (as root could): a data object on the backend
    // token. Then the agent starts again: backend handles are new.
    tb.stop_agent();
    {
        let (_backend, b) = backend_token(&tb);
        b.create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Label(b"planted".to_vec()),
            Attribute::Value(b"made on the backend".to_vec()),
        ])
        .expect("a data object on the backend token");
    }
    tb.start_agent();

    let s = ctx.user();
    assert_eq!(
        labels(&s),
        ["a-copy", "a-renamed", "a-secret"],
        "after a restart, tester's objects and no other"
    );
    let secret = by_label(&s, "a-secret");
    assert_eq!(secret.len(), 1, "tester's private data after a restart");
    assert_eq!(value_of(&s, secret[0]), SECRET);
    let cert = by_label(&s, "a-renamed");
    assert_eq!(cert.len(), 1, "tester's certificate after a restart");
    assert_eq!(value_of(&s, cert[0]), CERT);
    assert!(by_label(&s, "planted").is_empty(), "an object made behind keyward's back is shown");
    // Discovery reports it, and nothing an application made.
    let unowned: Vec<(String, String, String)> = keyward_json(&tb, &["discover"], 0)
        .items()
        .iter()
        .map(|f| (f.str_at("label").to_owned(), f.str_at("class").to_owned(), f.str_at("finding").to_owned()))
        .collect();
    assert_eq!(
        unowned,
        [("planted".to_owned(), "CKO_DATA".to_owned(), "unowned: in no application's namespace".to_owned())]
    );

    let mut other = Other::start(&tb);
    assert_eq!(other.ask("labels", "labels"), "b-secret", "after a restart, other's own object only");
    assert_eq!(other.ask("read a-secret", "read"), "");
    assert_eq!(other.ask("read a-copy", "read"), "");
    assert_eq!(other.ask("read planted", "read"), "");
    assert_eq!(other.ask("destroy a-renamed", "destroy"), "0");
    other.finish();

    // tester destroys what it made.
    s.destroy_object(secret[0]).expect("tester destroys its own data");
    assert!(by_label(&s, "a-secret").is_empty());
    s.destroy_object(cert[0]).expect("tester destroys its own certificate");
    s.destroy_object(by_label(&s, "a-copy")[0]).expect("tester destroys its copy");
    assert!(labels(&s).is_empty(), "{:?}", labels(&s));
});

// A managed key's own certificate that an administrator put on the
// backend token is shown, in strict mode, to the applications that see the
// key (`tester`, granted it), to no other (`other`); an application cannot
// destroy it, since it did not make it.
keyward_test!(fn a_managed_keys_certificate_is_shown_only_to_applications_that_see_the_key(tb) {
    tb.require_agent("two applications");
    let class = signing_class_toml("signing", "30d", "60d", &sign_grant_toml(APPLICATION));
    two_applications(&tb, &class);
    keyward_ok(&tb, &["key", "create", "web", "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "activate", "web"], 0);
    let ctx = Ctx::new(&tb);
    let (id, cert) = {
        let s = ctx.user();
        let id = id_of(&s, find(&s, "web", ObjectClass::PRIVATE_KEY)[0]);
        (id, certificate_of(&s, find(&s, "web", ObjectClass::PUBLIC_KEY)[0]))
    };
    tb.stop_agent();
    {
        let (_backend, b) = backend_token(&tb);
        b.create_object(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::CertificateType(CertificateType::X_509),
            Attribute::Token(true),
            Attribute::Label(b"web".to_vec()),
            Attribute::Id(id),
            Attribute::Subject(unhex(CERT_SUBJECT)),
            Attribute::Value(cert.clone()),
        ])
        .expect("the key's certificate on the backend token");
    }
    tb.start_agent();

    let s = ctx.user();
    let certs = s
        .find_objects(&[Attribute::Class(ObjectClass::CERTIFICATE)])
        .expect("C_FindObjects");
    assert_eq!(certs.len(), 1, "tester, granted the key, sees its certificate");
    assert_eq!(value_of(&s, certs[0]), cert);

    let mut other = Other::start(&tb);
    assert_eq!(other.ask("labels", "labels"), "", "other sees the certificate of a key it may not use");
    assert_eq!(other.ask("read web", "read"), "");
    other.finish();
    expect_err(s.destroy_object(certs[0]), cryptoki::error::RvError::ActionProhibited);
    assert_eq!(by_label(&s, "web").len(), 3, "the key pair and its certificate are all there");
    let findings = keyward_json(&tb, &["discover"], 0).items().to_vec();
    assert!(findings.is_empty(), "the key's own certificate is no finding: {findings:?}");
});

// Sharing: with `share_objects_with = ["other"]` in `tester`'s entry,
// `other` finds and reads `tester`'s objects but cannot destroy them;
// `tester` still does not see `other`'s.
keyward_test!(fn an_application_shares_its_objects_only_with_those_the_policy_names(tb) {
    tb.require_agent("two applications");
    let policy = format!(
        "[settings]\nmode = \"strict\"\n{}share_objects_with = [\"{OTHER}\"]\n\n[[application]]\nname = \"{OTHER}\"\nuid = {}\nexe = \"{}\"\n",
        application_toml(APPLICATION, uid()),
        uid(),
        probe_exe().display()
    );
    install_policy(&tb, &policy);
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    s.create_object(&private_data("a-shared", SECRET)).expect("C_CreateObject (data)");
    let mut other = Other::start(&tb);
    assert_eq!(other.ask(&format!("create b-own {}", hex(b"other's")), "create"), "CKR_OK");
    assert_eq!(other.ask("labels", "labels"), "a-shared,b-own");
    assert_eq!(other.ask("read a-shared", "read"), hex(SECRET));
    assert_eq!(other.ask("destroy a-shared", "destroy"), "0", "other destroys what it was shown");
    other.finish();
    assert_eq!(labels(&s), ["a-shared"], "tester sees other's object");
});

// In lab mode the token is one plain token: another process (here the
// same probe, unnamed by the lab policy) finds, reads and destroys the
// objects this one made. Unchanged by the namespaces of strict mode.
keyward_test!(fn in_lab_mode_token_objects_are_shared(tb) {
    tb.require_agent("two processes");
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    s.create_object(&private_data("shared", SECRET)).expect("C_CreateObject (data)");
    let mut other = Other::start(&tb);
    assert_eq!(other.ask("read shared", "read"), hex(SECRET));
    assert_eq!(other.ask("destroy shared", "destroy"), "1");
    other.finish();
    assert!(by_label(&s, "shared").is_empty());
});
