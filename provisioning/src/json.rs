//! The `--json` contract: the one place that decides what a JSON document
//! of `keyward` looks like. Every document is made from the agent's
//! answers (or the CLI's own findings) by [`view`], then printed by
//! `render::json` (pretty, one document) or `render::json_line` (one
//! compact object per line). The schemas in `docs/json/` describe the
//! results; the integration suite validates real output against them.
//!
//! The rules, applied to every object member wherever it sits:
//!
//! - an answer is never wrapped in its variant's name: a key is the key
//!   object, a list is an array, a short confirmation is `{"done": TEXT}`,
//!   a failure is `{"error": {"kind", "message", "exit_code"}}` with the
//!   kind in snake_case;
//! - times ([`is_time`]: `at`, `*_at`, the `*_until` and rotation and
//!   validity bounds, the scheduler's passes) are RFC 3339 UTC strings,
//!   `2026-12-05T09:00:00Z`; durations stay integers whose name ends in
//!   `_secs` (or `_us` for microseconds);
//! - `mechanism` is its `CKM_*` name and `result` its `CKR_*` name; a
//!   number no table knows is a hex string, `"0x80000001"`;
//! - `kind` and `severity` values are snake_case (`new_application`, `not_found`); key
//!   states, purposes, operations and algorithms are already their names;
//! - bytes are lowercase hex strings: `backend_id` (a `CKA_ID`), and
//!   `spki`, `der`, `file`, `bytes`, `head`, `signature` where they are
//!   bytes (a path or a count of that name stays as it is);
//! - pairs become objects: `keys_by_state` is `{STATE: COUNT}`,
//!   `custodians` is `[{custodian, index, digest}]`, `absent` is
//!   `[{name, reason}]`.
//!
//! The admin protocol itself is untouched (postcard, numbers): this is a
//! view for scripts only.

use keyward_protocol::admin::{ApprovalRequest, KeyInfo, KeyResponse, Report};
use serde::Serialize;
use serde_json::{Map, Value};

/// `value` as its JSON document, by the rules above.
pub fn view<T: Serialize + ?Sized>(value: &T) -> Value {
    match serde_json::to_value(value) {
        Ok(mut v) => {
            normalize(&mut v);
            v
        }
        Err(e) => error_document("unexpected", &e.to_string(), 1),
    }
}

/// The document of a failed command: `{"error": {"kind", "message",
/// "exit_code"}}`, `kind` in snake_case.
pub fn error_document(kind: &str, message: &str, exit_code: u8) -> Value {
    serde_json::json!({ "error": {
        "kind": snake_case(kind),
        "message": message,
        "exit_code": exit_code,
    }})
}

/// A key answer, unwrapped: the key, an array, `{"done": TEXT}`, the
/// approval request (with its `digest`), and so on.
pub fn key_view(resp: &KeyResponse) -> Value {
    match resp {
        KeyResponse::Key(k) => view(k),
        KeyResponse::Keys(keys) => Value::Array(keys.iter().map(key_summary).collect()),
        KeyResponse::Grants(g) => view(g),
        KeyResponse::Apps(a) => view(a),
        KeyResponse::Shadows(s) => view(s),
        KeyResponse::Pending(p) => request_view(p),
        KeyResponse::Requests(rs) => Value::Array(rs.iter().map(request_view).collect()),
        KeyResponse::Verified {
            key,
            version,
            detail,
        } => serde_json::json!({ "key": key, "version": version, "detail": detail }),
        KeyResponse::Done(text) => serde_json::json!({ "done": text }),
        KeyResponse::Policy(p) => view(p),
        KeyResponse::Backup(b) => untag(view(b)),
        KeyResponse::Distribution(d) => untag(view(d)),
        KeyResponse::Cert(c) => untag(view(c)),
        KeyResponse::Plan(p) => plan_view(p),
    }
}

/// A dry run's plan: its `outcome` is `{"kind": "done"}` or `{"kind":
/// "needs_approval", "action", "target", "approvals", "roles",
/// "pending"}`; an impact's `data` is snake_case; a pending request
/// concerning the key is `{"id", "action"}`.
pub fn plan_view(plan: &keyward_protocol::plan::Plan) -> Value {
    let mut v = view(plan);
    let Some(o) = v.as_object_mut() else {
        return v;
    };
    if let Some(outcome) = o.get_mut("outcome") {
        let (kind, mut fields) = match outcome.take() {
            Value::String(s) => (s, Map::new()),
            Value::Object(m) if m.len() == 1 => match m.into_iter().next() {
                Some((name, Value::Object(inner))) => (name, inner),
                Some((name, _)) => (name, Map::new()),
                None => (String::new(), Map::new()),
            },
            other => (
                "unknown".to_owned(),
                Map::from_iter([("value".to_owned(), other)]),
            ),
        };
        fields.insert("kind".into(), Value::String(snake_case(&kind)));
        *outcome = Value::Object(fields);
    }
    if let Some(impact) = o.get_mut("impact").and_then(Value::as_object_mut) {
        if let Some(Value::String(data)) = impact.get_mut("data") {
            *data = snake_case(data);
        }
        if let Some(Value::Array(pending)) = impact.get_mut("pending_requests") {
            for p in pending.iter_mut() {
                if let Value::Array(pair) = p {
                    *p = serde_json::json!({
                        "id": pair.first().cloned().unwrap_or(Value::Null),
                        "action": pair.get(1).cloned().unwrap_or(Value::Null),
                    });
                }
            }
        }
    }
    v
}

/// A key in `key list`: everything `key show` has but its history.
pub fn key_summary(key: &KeyInfo) -> Value {
    let mut v = view(key);
    if let Some(o) = v.as_object_mut() {
        o.remove("history");
    }
    v
}

/// An approval request, with its `digest` (hex) computed from its fields.
pub fn request_view(r: &ApprovalRequest) -> Value {
    let mut v = view(r);
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "digest".into(),
            Value::String(hex::encode(r.content().digest())),
        );
    }
    v
}

/// `keyward report`: its requests waiting carry their `digest` too.
pub fn report_view(report: &Report) -> Value {
    let mut v = view(report);
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "pending_requests".into(),
            Value::Array(report.pending_requests.iter().map(request_view).collect()),
        );
    }
    v
}

/// `{"Variant": {...}}` → `{...}`; `{"Variant": scalar}` →
/// `{"variant": scalar}`; anything else as it is.
pub fn untag(v: Value) -> Value {
    match v {
        Value::Object(map) if map.len() == 1 => {
            let Some((name, inner)) = map.into_iter().next() else {
                return Value::Object(Map::new());
            };
            match inner {
                inner @ (Value::Object(_) | Value::Array(_)) => inner,
                scalar => {
                    let mut o = Map::new();
                    o.insert(snake_case(&name), scalar);
                    Value::Object(o)
                }
            }
        }
        // A unit variant: its name.
        Value::String(s) => Value::String(snake_case(&s)),
        v => v,
    }
}

/// Whether member `name` holds a time (unix seconds in the protocol).
pub fn is_time(name: &str) -> bool {
    name == "at"
        || name.ends_with("_at")
        || matches!(
            name,
            "protect_until"
                | "process_until"
                | "recovery_until"
                | "next_rotation"
                | "not_before"
                | "not_after"
                | "scheduler_last_run"
                | "scheduler_next_run"
        )
}

/// Unix seconds as RFC 3339 in UTC (`2026-12-05T09:00:00Z`); `None` for
/// an instant outside years -9999 to 9999.
pub fn rfc3339(secs: i64) -> Option<String> {
    jiff::Timestamp::from_second(secs)
        .ok()
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// A `CKM_*` name, or the number in hex.
pub fn mechanism(value: u64) -> String {
    keyward_policy::mechanism_name(value).map_or_else(|| format!("{value:#x}"), str::to_owned)
}

/// A `CKR_*` name (or keyward's own result name), or the number in hex.
pub fn return_value(value: u64) -> String {
    keyward_policy::rv_name(value).map_or_else(|| format!("{value:#x}"), str::to_owned)
}

/// `NotFound` → `not_found`; text without capitals as it is.
pub fn snake_case(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for (i, c) in text.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn normalize(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (name, child) in map.iter_mut() {
                member(name, child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

/// One object member, by its name.
fn member(name: &str, v: &mut Value) {
    if is_time(name) {
        if let Some(text) = v.as_i64().and_then(rfc3339) {
            *v = Value::String(text);
            return;
        }
    }
    match name {
        "mechanism" => {
            if let Some(m) = v.as_u64() {
                *v = Value::String(mechanism(m));
            }
        }
        "result" => {
            if let Some(rv) = v.as_u64() {
                *v = Value::String(return_value(rv));
            }
        }
        "kind" | "severity" => {
            if let Value::String(s) = v {
                *s = snake_case(s);
            }
        }
        "backend_id" | "spki" | "der" | "file" | "bytes" | "head" | "signature" => {
            if let Some(bytes) = byte_array(v) {
                *v = Value::String(hex::encode(bytes));
            }
        }
        "keys_by_state" => {
            *v = pairs_to_object(std::mem::take(v));
        }
        "custodians" => tuples_to_objects(v, &["custodian", "index", "digest"]),
        "absent" => tuples_to_objects(v, &["name", "reason"]),
        _ => normalize(v),
    }
}

/// A JSON array of small integers as bytes.
fn byte_array(v: &Value) -> Option<Vec<u8>> {
    v.as_array()?
        .iter()
        .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
        .collect()
}

/// `[[NAME, VALUE], ...]` → `{NAME: VALUE, ...}`; anything else as it is.
fn pairs_to_object(v: Value) -> Value {
    let Value::Array(items) = v else {
        return v;
    };
    let mut out = Map::new();
    for item in &items {
        match item.as_array().map(Vec::as_slice) {
            Some([Value::String(name), value]) => {
                out.insert(name.clone(), value.clone());
            }
            _ => return Value::Array(items),
        }
    }
    Value::Object(out)
}

/// Each `[a, b, ...]` of the array `v` → `{names[0]: a, names[1]: b, ...}`.
fn tuples_to_objects(v: &mut Value, names: &[&str]) {
    let Value::Array(items) = v else {
        return;
    };
    for item in items.iter_mut() {
        if let Value::Array(fields) = item {
            if fields.len() == names.len() {
                let o: Map<String, Value> = names
                    .iter()
                    .map(|n| (*n).to_owned())
                    .zip(std::mem::take(fields))
                    .collect();
                *item = Value::Object(o);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_become_rfc3339_and_durations_stay_seconds() {
        let v = view(&json!({
            "at": 1_764_925_200,
            "created_at": 0,
            "protect_until": null,
            "not_after": 1_764_925_201,
            "uptime_secs": 5,
            "seq": 1_764_925_200,
        }));
        assert_eq!(
            v,
            json!({
                "at": "2025-12-05T09:00:00Z",
                "created_at": "1970-01-01T00:00:00Z",
                "protect_until": null,
                "not_after": "2025-12-05T09:00:01Z",
                "uptime_secs": 5,
                "seq": 1_764_925_200,
            })
        );
        // Out of the calendar: the number stays (no crash, nothing lost).
        assert_eq!(view(&json!({ "at": i64::MAX }))["at"], json!(i64::MAX));
    }

    #[test]
    fn mechanisms_and_results_are_names_or_hex() {
        let v = view(&json!([
            { "mechanism": 0x1041, "result": 0 },
            { "mechanism": 0x8000_0001_u64, "result": 0x68 },
            { "mechanism": null, "result": 0x8000_0001_u64 },
        ]));
        assert_eq!(v[0]["mechanism"], "CKM_ECDSA");
        assert_eq!(v[0]["result"], "CKR_OK");
        assert_eq!(v[1]["mechanism"], "0x80000001");
        assert_eq!(v[1]["result"], "CKR_KEY_FUNCTION_NOT_PERMITTED");
        assert_eq!(v[2]["mechanism"], Value::Null);
        assert!(v[2]["result"].as_str().is_some_and(|s| !s.is_empty()));
    }

    #[test]
    fn kinds_pairs_and_ids() {
        let v = view(&json!({
            "kind": "NewApplication",
            "keys_by_state": [["active", 2], ["pre-activation", 1]],
            "custodians": [["alice", 1, "ab"]],
            "absent": [["k", "why"]],
            "versions": [{ "backend_id": [1, 2, 255] }],
        }));
        assert_eq!(v["kind"], "new_application");
        assert_eq!(
            v["keys_by_state"],
            json!({ "active": 2, "pre-activation": 1 })
        );
        assert_eq!(
            v["custodians"],
            json!([{ "custodian": "alice", "index": 1, "digest": "ab" }])
        );
        assert_eq!(v["absent"], json!([{ "name": "k", "reason": "why" }]));
        assert_eq!(v["versions"][0]["backend_id"], "0102ff");
        let v = view(&json!({ "spki": [48, 1], "file": "/tmp/x", "bytes": 12 }));
        assert_eq!(v, json!({ "spki": "3001", "file": "/tmp/x", "bytes": 12 }));
        assert_eq!(
            view(&json!({ "kind": "pin-lockout" }))["kind"],
            "pin-lockout"
        );
    }

    #[test]
    fn answers_are_unwrapped() {
        assert_eq!(
            key_view(&KeyResponse::Done("ok".into())),
            json!({ "done": "ok" })
        );
        assert_eq!(key_view(&KeyResponse::Apps(vec![])), json!([]));
        assert_eq!(
            key_view(&KeyResponse::Verified {
                key: "k".into(),
                version: 3,
                detail: "d".into()
            }),
            json!({ "key": "k", "version": 3, "detail": "d" })
        );
        assert_eq!(
            untag(json!({ "Submitted": { "have": 1 } })),
            json!({ "have": 1 })
        );
        assert_eq!(
            error_document("NotFound", "no key", 4),
            json!({ "error": { "kind": "not_found", "message": "no key", "exit_code": 4 } })
        );
    }
}
