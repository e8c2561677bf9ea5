//! The `--json` contract against the real agent: every command family's
//! real output validates against its committed schema in `docs/json/`
//! (draft 2020-12, formats checked), with no variant wrappers, RFC 3339
//! times and names for mechanisms and return values; hostile text (quotes,
//! newlines, unicode, control characters) in reasons and names still
//! yields valid documents.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use keyward_tests::admin::{
    application_toml, backend_token, find, install_policy, keyward, keyward_json, keyward_ok,
    sign_grant_toml, signing_class_toml, uid, APPLICATION,
};
use keyward_tests::harness::Env;
use keyward_tests::json::{
    assert_contract, read_json, schema_dir, unix_seconds, validate, validator, Json, JsonExt,
};
use keyward_tests::keyward_test;
use keyward_tests::p11::Ctx;
use keyward_tests::roster::{key_file, ALICE_PEM};

/// `keyward --json ARGS` (exit `code`), validated against `schema`.
#[track_caller]
fn json_ok(tb: &Env, args: &[&str], code: i32, schema: &str) -> Json {
    let doc = keyward_json(tb, args, code);
    validate(schema, &doc);
    doc
}

/// `keyward --json ARGS` printing JSON lines (exit 0): each line validated
/// against `schema`.
#[track_caller]
fn json_lines_ok(tb: &Env, args: &[&str], schema: &str) -> Vec<Json> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let text = keyward_ok(tb, &all, 0);
    let v = validator(schema);
    text.lines()
        .map(|l| {
            let doc: Json =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{schema}: {errors:#?}\nin {l}");
            assert_contract(&doc);
            doc
        })
        .collect()
}

/// A failure: exit `code`, one error document on standard output that
/// validates, naming the same exit code; returns it.
#[track_caller]
fn json_err(tb: &Env, args: &[&str], code: i32) -> Json {
    let doc = json_ok(tb, args, code, "error.schema.json");
    assert_eq!(
        doc.at("error").i64_at("exit_code"),
        i64::from(code),
        "{doc}"
    );
    doc
}

fn policy() -> String {
    format!(
        "[settings]\nmode = \"strict\"\n{}{}",
        application_toml(APPLICATION, uid()),
        signing_class_toml("signing", "30d", "60d", &sign_grant_toml(APPLICATION)),
    )
}

keyward_test!(fn every_json_answer_validates_against_its_committed_schema(tb) {
    tb.require_agent("keyward --json");
    // The reader of times the assertions use.
    assert_eq!(unix_seconds("2026-12-05T09:00:00Z"), Some(1_796_461_200));

    install_policy(&tb, &policy());
    let created = json_ok(&tb, &["key", "create", "web", "--class", "signing"], 0, "key-show.schema.json");
    assert_eq!(created.str_at("name"), "web", "{created}");
    assert_eq!(created.str_at("state"), "pre-activation", "{created}");
    let active = json_ok(&tb, &["key", "activate", "web"], 0, "key-show.schema.json");
    assert_eq!(active.str_at("state"), "active", "{active}");
    keyward_ok(&tb, &["key", "create", "idle", "--class", "signing"], 0);

    // A use through the module: a record with a mechanism and a result.
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let private = find(&s, "web", ObjectClass::PRIVATE_KEY)[0];
    s.sign(&Mechanism::Ecdsa, private, &[7u8; 32]).expect("an active key signs");
    drop(s);

    let status = json_ok(&tb, &["status"], 0, "status.schema.json");
    assert_eq!(status.at("keys_by_state"), &serde_json::json!({ "pre-activation": 1, "active": 1 }), "{status}");

    let shown = json_ok(&tb, &["key", "show", "web"], 0, "key-show.schema.json");
    assert!(!shown.array_at("history").is_empty(), "key show has the history: {shown}");
    assert!(shown.time_at("created_at") > 1_700_000_000, "{shown}");
    assert_eq!(shown.array_at("versions")[0].str_at("backend_id").len() % 2, 0, "{shown}");

    let listed = json_ok(&tb, &["key", "list"], 0, "key-list.schema.json");
    assert_eq!(listed.items().len(), 2, "{listed}");
    assert!(listed.items().iter().all(|k| k.get("history").is_none()), "key list carries no history: {listed}");

    let grants = json_ok(&tb, &["grant", "list", "web"], 0, "grant-list.schema.json");
    assert!(grants.items().iter().any(|g| g.str_at("application") == APPLICATION), "{grants}");
    let apps = json_ok(&tb, &["app", "list"], 0, "app-list.schema.json");
    assert_eq!(apps.items()[0].str_at("name"), APPLICATION, "{apps}");
    json_ok(&tb, &["policy", "show"], 0, "policy-show.schema.json");
    json_ok(&tb, &["discover"], 0, "discover.schema.json");
    let verified = json_ok(&tb, &["key", "verify", "web"], 0, "key-verify.schema.json");
    assert_eq!(verified.str_at("key"), "web", "{verified}");
    let pubkey = json_ok(&tb, &["key", "pubkey", "web"], 0, "key-pubkey.schema.json");
    assert!(pubkey.str_at("pem").starts_with("-----BEGIN PUBLIC KEY-----"), "{pubkey}");
    let csr = json_ok(&tb, &["cert", "request", "web", "--subject", "CN=web"], 0, "cert.schema.json");
    assert!(csr.get("der").is_none(), "{csr}");
    let cert = json_ok(&tb, &["cert", "self-sign", "web", "--subject", "CN=web"], 0, "cert.schema.json");
    assert!(cert.time_at("not_after") > shown.time_at("created_at"), "{cert}");
    let added = json_ok(
        &tb,
        &["grant", "add", "web", APPLICATION, "--ops", "verify", "--for", "1h"],
        0,
        "grant-list.schema.json",
    );
    assert!(added.items().iter().any(|g| !g.at("expires_at").is_null()), "{added}");
    let removed = json_ok(&tb, &["grant", "remove", "web", APPLICATION], 0, "done.schema.json");
    assert!(removed.str_at("done").contains("removed"), "{removed}");
    // The same policy again: nothing to do, said in a sentence.
    let again = json_ok(&tb, &["policy", "reload"], 0, "done.schema.json");
    assert!(!again.str_at("done").is_empty(), "{again}");
    // A policy file checked locally, valid and not.
    let file = tb.path("policy.toml");
    let checked = json_ok(&tb, &["policy", "check", file.to_str().unwrap()], 0, "policy-check.schema.json");
    assert_eq!(checked.at("valid"), &Json::Bool(true), "{checked}");
    let bad = tb.path("bad-policy.toml");
    std::fs::write(&bad, "[settings]\nmode = \"strict\"\n[[class]]\nname = 3\n").unwrap();
    let checked = json_ok(&tb, &["policy", "check", bad.to_str().unwrap()], 1, "policy-check.schema.json");
    assert_eq!(checked.at("error").i64_at("exit_code"), 1, "{checked}");

    // Dual control without a roster: resume waits for one approval (exit 3).
    keyward_ok(&tb, &["key", "suspend", "web", "--reason", "check"], 0);
    let pending = json_ok(&tb, &["key", "resume", "web", "--reason", "found"], 3, "request-show.schema.json");
    assert_eq!(pending.str_at("status"), "pending", "{pending}");
    let id = pending.str_at("id").to_owned();
    let requests = json_ok(&tb, &["request", "list"], 0, "request-list.schema.json");
    assert_eq!(requests.items().len(), 1, "{requests}");
    let one = json_ok(&tb, &["request", "show", &id], 0, "request-show.schema.json");
    assert_eq!(one.str_at("id"), id, "request show is the request, not an array: {one}");
    assert_eq!(one.str_at("digest").len(), 64, "{one}");

    let report = json_ok(&tb, &["report"], 0, "report.schema.json");
    assert_eq!(report.array_at("pending_requests")[0].str_at("digest"), one.str_at("digest"), "{report}");
    assert!(report.array_at("keys").iter().any(|k| k.str_at("name") == "web"), "{report}");

    let verify = json_ok(&tb, &["audit", "verify"], 0, "audit-verify.schema.json");
    assert!(verify.i64_at("records") > 0, "{verify}");
    let anchor_text = keyward_ok(&tb, &["--json", "audit", "anchor"], 0);
    assert_eq!(anchor_text.lines().count(), 1, "one anchor per line: {anchor_text}");
    let anchor: Json = serde_json::from_str(&anchor_text).expect("an anchor document");
    validate("audit-anchor.schema.json", &anchor);
    // The document is what `audit verify --anchor` reads.
    let anchors = tb.path("anchors.jsonl");
    std::fs::write(&anchors, &anchor_text).unwrap();
    json_ok(&tb, &["audit", "verify", "--anchor", anchors.to_str().unwrap()], 0, "audit-verify.schema.json");

    let tail = json_lines_ok(&tb, &["audit", "tail", "-n", "20"], "audit-record.schema.json");
    assert!(!tail.is_empty());
    let records = json_lines_ok(&tb, &["audit", "query", "--key", "web"], "audit-record.schema.json");
    let sign = records
        .iter()
        .find(|r| r.str_at("kind") == "use" && r.str_at("operation") == "sign")
        .unwrap_or_else(|| panic!("no use on the trail: {records:#?}"));
    assert_eq!(sign.str_at("mechanism"), "CKM_ECDSA", "{sign}");
    assert_eq!(sign.str_at("result"), "CKR_OK", "{sign}");

    // The waiting request decided (no roster: one approval carries it out).
    let decided = json_ok(&tb, &["request", "approve", &id], 0, "request-decision.schema.json");
    assert_eq!(decided.str_at("decision"), "approve", "{decided}");
    assert_eq!(decided.str_at("digest"), one.str_at("digest"), "{decided}");

    let backup = json_ok(&tb, &["backup", "status"], 0, "backup-status.schema.json");
    assert_eq!(backup.at("present").as_bool(), Some(false), "{backup}");

    // Failures: one error document, the same shape everywhere.
    let missing = json_err(&tb, &["key", "show", "nope"], 4);
    assert_eq!(missing.at("error").str_at("kind"), "not_found", "{missing}");
    json_err(&tb, &["key", "activate", "idle", "--token", "no-such-token"], 4);
    json_err(&tb, &["key", "create", "web", "--class", "signing"], 6);
    // Local: an administrator's public key for the roster.
    let pem = key_file(&tb, "alice.pem", ALICE_PEM, uid());
    let admin_key = json_ok(&tb, &["admin-key", "show", pem.to_str().unwrap()], 0, "admin-key-show.schema.json");
    assert!(!admin_key.str_at("public_key").is_empty(), "{admin_key}");
    // Local: the security devices here, or why they cannot be listed.
    let out = keyward(&tb, &["--json", "devices"]);
    let doc: Json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("devices: {e}: {out:?}"));
    validate("devices.schema.json", &doc);
    assert_eq!(out.status.code(), Some(if doc.is_array() { 0 } else { 1 }), "{out:?}");
    // A JSON-lines command's failure: one error line.
    let out = keyward(&tb, &["--json", "audit", "query", "--key", "nope"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    validate("error.schema.json", &serde_json::from_str(&text).expect("an error line"));

    // What keyward_json checks of every document, here on the JSON lines.
    assert_contract(&Json::Array(records));
});

keyward_test!(fn hostile_text_in_reasons_and_names_still_yields_valid_json(tb) {
    tb.require_agent("keyward --json with hostile text");
    install_policy(&tb, &policy());
    keyward_ok(&tb, &["key", "create", "k", "--class", "signing"], 0);
    keyward_ok(&tb, &["key", "activate", "k"], 0);
    let reason = "say \"no\"\n\t\\ é 鍵 🔑 \u{1b}[31m red \u{7f} end";
    keyward_ok(&tb, &["key", "suspend", "k", "--reason", reason], 0);
    let shown = json_ok(&tb, &["key", "show", "k"], 0, "key-show.schema.json");
    let history = shown.array_at("history");
    assert!(history.iter().any(|h| h.str_at("reason").contains("鍵 🔑")), "the reason is kept whole: {shown}");

    let pending = json_ok(&tb, &["key", "resume", "k", "--reason", reason], 3, "request-show.schema.json");
    assert_eq!(pending.str_at("reason"), reason, "{pending}");
    let listed = json_ok(&tb, &["request", "list"], 0, "request-list.schema.json");
    assert_eq!(listed.items()[0].str_at("reason"), reason, "{listed}");
    // The trail's JSON lines: one record per line whatever the text.
    let records = json_lines_ok(&tb, &["audit", "query", "--key", "k"], "audit-record.schema.json");
    assert!(records.iter().any(|r| r.str_at("reason").contains("say \"no\"\n")), "{records:#?}");

    // Names that are not names: a clear error document, nothing made.
    for name in ["we\"ird\nname", "鍵", "a b", "\u{1b}[2J"] {
        let doc = json_err(&tb, &["key", "show", name], 4);
        assert!(doc.at("error").str_at("message").starts_with("no key "), "{doc}");
        let doc = json_err(&tb, &["key", "create", name, "--class", "signing"], 2);
        assert_eq!(doc.at("error").str_at("kind"), "invalid", "{doc}");
    }
    let listed = json_ok(&tb, &["key", "list"], 0, "key-list.schema.json");
    assert_eq!(listed.items().len(), 1, "{listed}");

    // A label written behind keyward's back (anyone who can create objects
    // on the HSM can): quotes, a newline, an escape sequence and bytes that
    // are not UTF-8. `discover` still prints one valid document naming it.
    tb.stop_agent();
    {
        let (_backend, b) = backend_token(&tb);
        b.create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Label(b"evil \"label\"\n\x1b[2J \xff\xfe end".to_vec()),
            Attribute::Value(b"made on the backend".to_vec()),
        ])
        .expect("a data object on the backend token");
    }
    tb.start_agent();
    let found = json_ok(&tb, &["discover"], 0, "discover.schema.json");
    let label = found
        .items()
        .iter()
        .map(|f| f.str_at("label"))
        .find(|l| l.starts_with("evil"))
        .unwrap_or_else(|| panic!("the planted object is not listed: {found}"));
    assert!(label.contains("\"label\"\n") && label.ends_with(" end"), "{label:?}");
});

/// Every committed schema compiles (draft 2020-12, its references
/// resolved from the folder), and `docs/json/README.md` lists exactly the
/// schema files there are.
#[test]
fn every_schema_compiles_and_the_readme_lists_each() {
    let readme =
        std::fs::read_to_string(schema_dir().join("README.md")).expect("docs/json/README.md");
    let mut files: Vec<String> = std::fs::read_dir(schema_dir())
        .expect("docs/json")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".schema.json"))
        .collect();
    files.sort();
    assert!(files.len() > 20, "{files:?}");
    for name in &files {
        let doc = read_json(&schema_dir().join(name));
        assert_eq!(
            doc.str_at("$schema"),
            "https://json-schema.org/draft/2020-12/schema",
            "{name}"
        );
        validator(name);
        assert!(
            readme.contains(&format!("`{name}`")),
            "{name} is not in docs/json/README.md"
        );
    }
    for word in readme.split('`').filter(|w| w.ends_with(".schema.json")) {
        assert!(
            files.iter().any(|f| f == word),
            "README names {word}, which does not exist"
        );
    }
    // A schema rejects the old shapes: a wrapped key list, numeric times.
    let old = serde_json::json!({ "Keys": [] });
    assert!(!validator("key-list.schema.json").is_valid(&old));
    let old =
        serde_json::json!({ "Error": { "kind": "NotFound", "message": "m", "exit_code": 4 } });
    assert!(!validator("error.schema.json").is_valid(&old));
    let record = serde_json::json!({
        "seq": 1, "at": 1_796_461_200, "micros": 0, "kind": "use", "actor": "application",
        "application": null, "uid": null, "pid": null, "exe": null, "token": null, "key": null,
        "key_version": null, "operation": "sign", "mechanism": 4161, "result": 0, "reason": "",
        "count": 1, "span_us": 0, "host": null
    });
    assert!(!validator("audit-record.schema.json").is_valid(&record));
    let mut record = record;
    record["at"] = "2026-12-05T09:00:00Z".into();
    record["mechanism"] = "CKM_ECDSA".into();
    record["result"] = "CKR_OK".into();
    assert!(
        validator("audit-record.schema.json").is_valid(&record),
        "{record}"
    );
}
