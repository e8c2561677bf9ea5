//! The shared store's inventory (`PgInventory`) against the SQLite one:
//! the same scenarios, written once against `&dyn Inventory`, run on a
//! `SqliteInventory` in a temporary directory (`sqlite_*`, one test each)
//! and on a `PgInventory` on a real PostgreSQL server (`postgres_*`: a few
//! servers, each scenario on a new database of its own), so the two stores
//! give the same answers, errors and messages. After each scenario the
//! store's `check` finds nothing.
//!
//! Then what only a shared store has: two agents (two `PgInventory`s of
//! two hosts on one database) racing on one key or one request, the
//! notifications a `LISTEN keyward` session receives (none for a change
//! that rolled back), and a server that stops and starts again under an
//! open store.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use keyward_inventory::postgres::{Connector, Notice, PgInventory, CHANNEL};
use keyward_inventory::{
    Actor, ApprovalRecord, AuditEvent, AuditKind, CertificateRecord, DateUpdates, Decided,
    DecisionRecord, Error, Grant, Inventory, KeyChange, KeyFilter, KeyRecord, KeyVersion,
    LifecycleChange, SqliteInventory, VersionChange,
};
use keyward_policy::{ApprovalStatus, Decision, KeyState, Operation, Purpose, ReasonCode};
use keyward_tests::postgres::PgServer;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, Config, NoTls};

const T0: i64 = 1_700_000_000;

// ---- the two stores ---------------------------------------------------------

/// A store on a database of `config`, as agent `host`.
fn pg_store(config: &Config, host: &str) -> PgInventory {
    let config = config.clone();
    let connect: Connector = Arc::new(move || config.connect(NoTls));
    PgInventory::open(connect, host).unwrap_or_else(|e| panic!("open the shared store: {e}"))
}

/// A scenario, run on each store.
type Scenario = fn(&dyn Inventory);

/// Runs `scenario` on a new SQLite store, then checks the store.
fn on_sqlite(scenario: Scenario) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let inv = SqliteInventory::open(dir.path().join("inventory.sqlite")).expect("open SQLite");
    scenario(&inv);
    assert_eq!(inv.check().expect("check"), Vec::<String>::new());
}

/// Runs each of `scenarios` on a new database of one PostgreSQL server,
/// then checks that store; fails naming every scenario that failed.
fn on_postgres(scenarios: &[(&str, Scenario)]) {
    let pg = PgServer::new();
    let mut failed = Vec::new();
    for (name, scenario) in scenarios {
        let config = pg.new_database();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let inv = pg_store(&config, "agent-a");
            scenario(&inv);
            assert_eq!(inv.check().expect("check"), Vec::<String>::new());
        }));
        if outcome.is_err() {
            failed.push(*name);
        }
    }
    assert!(failed.is_empty(), "failed on PostgreSQL: {failed:?}");
}

/// A `sqlite::<scenario>` test per scenario, and a `postgres_<group>`
/// test per group, running its scenarios on one server.
macro_rules! conformance {
    ($($group:ident: [$($scenario:ident),* $(,)?]),* $(,)?) => {
        mod sqlite {
            $($(
                #[test]
                fn $scenario() {
                    super::on_sqlite(super::scenarios::$scenario);
                }
            )*)*
        }
        $(
            #[test]
            fn $group() {
                on_postgres(&[$((
                    stringify!($scenario),
                    scenarios::$scenario as Scenario,
                )),*]);
            }
        )*
    };
}

conformance! {
    postgres_keys_and_lifecycle: [
        schema_is_the_latest,
        keys_are_created_read_and_listed_by_filter,
        taken_names_and_backend_ids_are_exists_and_nothing_is_written,
        lifecycle_changes_check_the_expected_state,
        a_rotation_must_add_the_next_version,
        touch_never_moves_the_last_use_back,
    ],
    postgres_grants_requests_and_records: [
        grants_are_replaced_listed_and_revoked,
        requests_are_decided_to_a_quorum_executed_once_and_closed,
        a_grant_executes_its_approved_request,
        a_sole_request_refuses_a_second_pending_one,
        object_owners_count_up_and_down,
        certificates_are_recorded_and_replaced,
        fingerprints_are_written_once_and_replaced_from_the_stored_one,
        agent_keys_are_written_once,
    ],
}

// ---- building blocks -----------------------------------------------------

fn draft(token: &str, name: &str) -> KeyRecord {
    KeyRecord {
        id: 0,
        name: name.into(),
        token: token.into(),
        owner: "payments".into(),
        purpose: Purpose::Signing,
        class: "tls-server".into(),
        algorithm: "ec:p256".parse().expect("algorithm"),
        state: KeyState::Active,
        created_at: T0,
        activated_at: Some(T0),
        rotated_at: None,
        deactivated_at: None,
        protect_until: Some(T0 + 86_400),
        process_until: None,
        next_rotation: Some(T0 + 3_600),
        scope: vec!["pci-dss".into(), "gdpr".into()],
        last_used_at: None,
        backup_allowed: false,
        recovery_until: None,
        reason_code: None,
    }
}

fn backend(id: &[u8], version: u32) -> KeyVersion {
    KeyVersion {
        key_id: 0,
        version,
        backend_id: id.to_vec(),
        backend_label: "label".into(),
        state: KeyState::Active,
        created_at: T0,
        deactivated_at: None,
        destroyed_at: None,
        fingerprint: None,
    }
}

fn creation(key: KeyRecord, id: &[u8]) -> LifecycleChange {
    LifecycleChange {
        key: KeyChange::Create(Box::new(key)),
        versions: vec![VersionChange::Add(backend(id, 1))],
        dates: DateUpdates::default(),
        actor: "admin".into(),
        reason: "created".into(),
        at: T0,
        trail: Vec::new(),
    }
}

fn create(inv: &dyn Inventory, token: &str, name: &str, id: &[u8]) -> KeyRecord {
    inv.apply(&creation(draft(token, name), id))
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
        .key
}

fn change(
    key_id: i64,
    expected: KeyState,
    to: Option<KeyState>,
    versions: Vec<VersionChange>,
) -> LifecycleChange {
    LifecycleChange {
        key: KeyChange::Update {
            key_id,
            expected,
            to,
            code: None,
        },
        versions,
        dates: DateUpdates::default(),
        actor: "alice".into(),
        reason: "test".into(),
        at: T0 + 100,
        trail: Vec::new(),
    }
}

fn record(key: &str, operation: &str) -> AuditEvent {
    AuditEvent {
        at: T0 + 100,
        micros: 0,
        kind: AuditKind::Lifecycle,
        actor: Actor::Scheduler,
        token: Some("tok".into()),
        key: Some(key.into()),
        key_version: Some(1),
        operation: operation.into(),
        mechanism: None,
        result: 0,
        reason: "test".into(),
        count: 1,
        span_us: 0,
    }
}

fn request(id: &str, action: &str, target: &str, key_id: Option<i64>) -> ApprovalRecord {
    ApprovalRecord {
        id: id.into(),
        action: action.into(),
        target: target.into(),
        key_id,
        parameters: "{}".into(),
        requester: "uid:1000".into(),
        reason: "ticket 42".into(),
        created_at: T0,
        expires_at: T0 + 3_600,
        status: ApprovalStatus::Pending,
        outcome: String::new(),
        closed_at: None,
    }
}

fn decision(admin: &str, decision: Decision, at: i64) -> DecisionRecord {
    DecisionRecord {
        administrator: admin.into(),
        decision,
        signature: Some(vec![7; 64]),
        at,
    }
}

fn grant(key_id: i64, application: &str, operations: &[Operation]) -> Grant {
    Grant {
        key_id,
        application: application.into(),
        operations: operations.to_vec(),
        expires_at: Some(T0 + 600),
    }
}

/// The text of an error that must be `variant`.
fn err_text(result: Result<impl std::fmt::Debug, Error>, variant: &str) -> String {
    match result {
        Err(e) => {
            let name = match &e {
                Error::Exists(_) => "Exists",
                Error::NotFound(_) => "NotFound",
                Error::Conflict { .. } => "Conflict",
                Error::Invalid(_) => "Invalid",
                Error::Unavailable(_) => "Unavailable",
                other => panic!("expected {variant}, got {other:?}"),
            };
            assert_eq!(name, variant, "{e}");
            e.to_string()
        }
        Ok(v) => panic!("expected {variant}, got Ok({v:?})"),
    }
}

// ---- the scenarios, once for both stores ------------------------------------

mod scenarios {
    use super::*;

    pub fn schema_is_the_latest(inv: &dyn Inventory) {
        assert_eq!(
            inv.schema_version().expect("schema version"),
            keyward_inventory::SCHEMA_VERSION
        );
    }

    pub fn keys_are_created_read_and_listed_by_filter(inv: &dyn Inventory) {
        let a = create(inv, "tok", "b-key", b"id-1");
        let b = create(inv, "tok", "a-key", b"id-2");
        let mut other = draft("other", "c-key");
        other.class = "code-signing".into();
        other.state = KeyState::PreActivation;
        other.activated_at = None;
        other.backup_allowed = true;
        let mut first = creation(other, b"id-1");
        if let VersionChange::Add(v) = &mut first.versions[0] {
            v.state = KeyState::PreActivation;
        }
        let c = inv.apply(&first).expect("a key on another token").key;
        assert!(a.id > 0 && b.id > a.id && c.id > b.id, "{a:?} {b:?} {c:?}");
        assert_eq!(a.scope, vec!["pci-dss".to_owned(), "gdpr".to_owned()]);
        assert!(c.backup_allowed);

        assert_eq!(inv.key("tok", "b-key").expect("key"), Some(a.clone()));
        assert_eq!(inv.key_by_id(c.id).expect("key by id"), Some(c.clone()));
        assert_eq!(inv.key("tok", "c-key").expect("key"), None);
        assert_eq!(inv.key_by_id(9_999).expect("key by id"), None);

        let names = |f: KeyFilter| -> Vec<String> {
            inv.keys(&f)
                .expect("keys")
                .into_iter()
                .map(|k| format!("{}/{}", k.token, k.name))
                .collect()
        };
        assert_eq!(
            names(KeyFilter::default()),
            ["other/c-key", "tok/a-key", "tok/b-key"]
        );
        assert_eq!(
            names(KeyFilter {
                token: Some("tok".into()),
                ..KeyFilter::default()
            }),
            ["tok/a-key", "tok/b-key"]
        );
        assert_eq!(
            names(KeyFilter {
                state: Some(KeyState::PreActivation),
                ..KeyFilter::default()
            }),
            ["other/c-key"]
        );
        assert_eq!(
            names(KeyFilter {
                class: Some("tls-server".into()),
                token: Some("tok".into()),
                state: Some(KeyState::Active),
            }),
            ["tok/a-key", "tok/b-key"]
        );
        assert!(names(KeyFilter {
            class: Some("none".into()),
            ..KeyFilter::default()
        })
        .is_empty());

        let versions = inv.versions(a.id).expect("versions");
        assert_eq!(versions.len(), 1);
        assert_eq!(
            (versions[0].key_id, versions[0].version),
            (a.id, 1),
            "{versions:?}"
        );
        assert_eq!(versions[0].backend_id, b"id-1");
        // One CKA_ID on two tokens: each token's lookup finds its own.
        let (k, v) = inv
            .version_by_backend_id("other", b"id-1")
            .expect("lookup")
            .expect("found");
        assert_eq!((k, v.version), (c.clone(), 1));
        let (k, _) = inv
            .version_by_backend_id("tok", b"id-1")
            .expect("lookup")
            .expect("found");
        assert_eq!(k.id, a.id);
        assert_eq!(
            inv.version_by_backend_id("tok", b"nope").expect("lookup"),
            None
        );

        let history = inv.history(a.id).expect("history");
        assert_eq!(history.len(), 2, "{history:?}");
        assert_eq!(
            (history[0].version, history[0].from, history[0].to),
            (None, None, KeyState::Active)
        );
        assert_eq!(
            (history[1].version, history[1].from, history[1].to),
            (Some(1), None, KeyState::Active)
        );
        assert!(history[0].seq < history[1].seq);
        assert_eq!(
            (history[0].actor.as_str(), history[0].reason.as_str()),
            ("admin", "created")
        );
        assert!(inv.history(9_999).expect("history").is_empty());
        assert!(inv.versions(9_999).expect("versions").is_empty());
    }

    pub fn taken_names_and_backend_ids_are_exists_and_nothing_is_written(inv: &dyn Inventory) {
        let a = create(inv, "tok", "k", b"id-1");
        let text = err_text(inv.apply(&creation(draft("tok", "k"), b"id-9")), "Exists");
        assert_eq!(text, "key \"k\" on token \"tok\" already exists");
        let text = err_text(inv.apply(&creation(draft("tok", "k2"), b"id-1")), "Exists");
        assert_eq!(
            text,
            format!(
                "a key version with CKA_ID {} on token \"tok\" already exists",
                hex::encode(b"id-1")
            )
        );
        // Nothing of the refused creations was kept.
        assert_eq!(inv.key("tok", "k2").expect("key"), None);
        assert_eq!(inv.keys(&KeyFilter::default()).expect("keys"), vec![a]);
        // A rotation onto a taken CKA_ID is refused the same way.
        create(inv, "tok", "other", b"id-2");
        let rotate = change(
            inv.key("tok", "k").expect("key").expect("k").id,
            KeyState::Active,
            None,
            vec![VersionChange::Add(backend(b"id-2", 2))],
        );
        err_text(inv.apply(&rotate), "Exists");
    }

    pub fn lifecycle_changes_check_the_expected_state(inv: &dyn Inventory) {
        let key = create(inv, "tok", "k", b"id-1");
        let mut suspend = change(key.id, KeyState::Active, Some(KeyState::Suspended), vec![]);
        if let KeyChange::Update { code, .. } = &mut suspend.key {
            *code = Some(ReasonCode::CertificateHold);
        }
        suspend.trail = vec![record("k", "suspend"), record("k", "suspend-2")];
        let done = inv.apply(&suspend).expect("suspend");
        assert_eq!(done.key.state, KeyState::Suspended);
        assert_eq!(done.key.reason_code, Some(ReasonCode::CertificateHold));
        assert_eq!(done.history.len(), 1);
        assert_eq!(
            (done.history[0].from, done.history[0].to),
            (Some(KeyState::Active), KeyState::Suspended)
        );
        let (first, last) = done.trail.expect("trail records");
        assert_eq!(last - first, 1);

        // The same move again: the stored state is no longer the expected one.
        let text = err_text(inv.apply(&suspend), "Conflict");
        assert_eq!(
            text,
            "conflict on state of key 1: expected active, found suspended"
                .replace("key 1", &format!("key {}", key.id))
        );
        assert_eq!(inv.history(key.id).expect("history").len(), 3);

        // Deactivation stamps the date; versions move with the key.
        let deactivate = change(
            key.id,
            KeyState::Suspended,
            Some(KeyState::Deactivated),
            vec![VersionChange::Move {
                version: 1,
                from: KeyState::Active,
                to: KeyState::Deactivated,
            }],
        );
        let done = inv.apply(&deactivate).expect("deactivate");
        assert_eq!(done.key.deactivated_at, Some(T0 + 100));
        assert_eq!(done.key.reason_code, None);
        let v = &inv.versions(key.id).expect("versions")[0];
        assert_eq!(
            (v.state, v.deactivated_at),
            (KeyState::Deactivated, Some(T0 + 100))
        );
        let trail = done.trail;
        assert_eq!(trail, None);

        // A version's expected state is checked too, and a refused change
        // leaves nothing (the key's own move included).
        let destroy = change(
            key.id,
            KeyState::Deactivated,
            Some(KeyState::Destroyed),
            vec![VersionChange::Move {
                version: 1,
                from: KeyState::Active,
                to: KeyState::Destroyed,
            }],
        );
        let text = err_text(inv.apply(&destroy), "Conflict");
        assert_eq!(
            text,
            format!(
                "conflict on state of version 1 of key {}: expected active, found deactivated",
                key.id
            )
        );
        assert_eq!(
            inv.key_by_id(key.id).expect("key").expect("k").state,
            KeyState::Deactivated
        );

        // Dates only.
        let mut dates = change(key.id, KeyState::Deactivated, None, vec![]);
        dates.dates.process_until = Some(T0 + 9_000);
        let done = inv.apply(&dates).expect("dates");
        assert_eq!(done.key.process_until, Some(T0 + 9_000));
        assert!(done.history.is_empty());

        // Unknown keys and versions, and changes that change nothing.
        let text = err_text(
            inv.apply(&change(
                9_999,
                KeyState::Active,
                Some(KeyState::Suspended),
                vec![],
            )),
            "NotFound",
        );
        assert_eq!(text, "key 9999 not found");
        let text = err_text(
            inv.apply(&change(
                key.id,
                KeyState::Deactivated,
                None,
                vec![VersionChange::Move {
                    version: 7,
                    from: KeyState::Active,
                    to: KeyState::Suspended,
                }],
            )),
            "NotFound",
        );
        assert_eq!(text, format!("version 7 of key {} not found", key.id));
        let text = err_text(
            inv.apply(&change(key.id, KeyState::Deactivated, None, vec![])),
            "Invalid",
        );
        assert_eq!(text, "invalid argument: the change changes nothing");
        let mut bad = creation(draft("tok", ""), b"x");
        err_text(inv.apply(&bad), "Invalid");
        bad = creation(draft("tok", "bad-trail"), b"x");
        bad.trail = vec![record("bad-trail", "")];
        err_text(inv.apply(&bad), "Invalid");
        assert_eq!(inv.key("tok", "bad-trail").expect("key"), None);
    }

    pub fn a_rotation_must_add_the_next_version(inv: &dyn Inventory) {
        let key = create(inv, "tok", "k", b"id-1");
        let rotate = |number: u32, id: &[u8]| {
            let mut c = change(
                key.id,
                KeyState::Active,
                None,
                vec![
                    VersionChange::Add(backend(id, number)),
                    VersionChange::Move {
                        version: 1,
                        from: KeyState::Active,
                        to: KeyState::Deactivated,
                    },
                ],
            );
            c.dates.rotated_at = Some(T0 + 100);
            c
        };
        let done = inv.apply(&rotate(2, b"id-2")).expect("rotate");
        assert_eq!(done.key.rotated_at, Some(T0 + 100));
        assert_eq!(done.history.len(), 2);
        // The racing rotation, prepared from the same read, comes second.
        let text = err_text(inv.apply(&rotate(2, b"id-3")), "Conflict");
        assert_eq!(
            text,
            format!(
                "conflict on new version of key {}: expected version 2, found next version 3",
                key.id
            )
        );
        let states: Vec<(u32, KeyState)> = inv
            .versions(key.id)
            .expect("versions")
            .iter()
            .map(|v| (v.version, v.state))
            .collect();
        assert_eq!(states, [(1, KeyState::Deactivated), (2, KeyState::Active)]);
        assert_eq!(
            inv.version_by_backend_id("tok", b"id-3").expect("lookup"),
            None
        );
    }

    pub fn grants_are_replaced_listed_and_revoked(inv: &dyn Inventory) {
        let a = create(inv, "tok", "a", b"id-1");
        let b = create(inv, "tok", "b", b"id-2");
        inv.grant(&grant(a.id, "web", &[Operation::Sign]), "admin")
            .expect("grant");
        inv.grant(&grant(a.id, "batch", &[Operation::Verify]), "admin")
            .expect("grant");
        inv.grant(&grant(b.id, "web", &[Operation::Sign]), "admin")
            .expect("grant");
        // A second grant replaces the application's first.
        let both = grant(a.id, "web", &[Operation::Sign, Operation::Verify]);
        inv.grant(&both, "admin").expect("replace");
        assert_eq!(
            inv.grants(a.id).expect("grants"),
            vec![grant(a.id, "batch", &[Operation::Verify]), both.clone()]
        );
        let web: Vec<i64> = inv
            .grants_for_application("web")
            .expect("grants")
            .iter()
            .map(|g| g.key_id)
            .collect();
        assert_eq!(web, [a.id, b.id]);
        inv.revoke_grant(a.id, "web", "admin").expect("revoke");
        let text = err_text(inv.revoke_grant(a.id, "web", "admin"), "NotFound");
        assert_eq!(text, format!("grant of key {} to \"web\" not found", a.id));
        assert_eq!(
            inv.grants(a.id).expect("grants"),
            vec![grant(a.id, "batch", &[Operation::Verify])]
        );
        let text = err_text(
            inv.grant(&grant(9_999, "web", &[Operation::Sign]), "admin"),
            "NotFound",
        );
        assert_eq!(text, "key 9999 not found");
        let text = err_text(inv.grant(&grant(a.id, "web", &[]), "admin"), "Invalid");
        assert_eq!(
            text,
            "invalid argument: grant to \"web\": operations must be a non-empty list"
        );
        assert!(inv
            .grants_for_application("nobody")
            .expect("grants")
            .is_empty());
    }

    pub fn requests_are_decided_to_a_quorum_executed_once_and_closed(inv: &dyn Inventory) {
        let key = create(inv, "tok", "k", b"id-1");
        let q = request("r1", "resume", "tok/k", Some(key.id));
        inv.create_request(&q).expect("create");
        let text = err_text(inv.create_request(&q), "Exists");
        assert_eq!(text, "request r1 already exists");
        assert_eq!(inv.request("r1").expect("request"), Some(q.clone()));
        assert_eq!(inv.request("nope").expect("request"), None);

        let d = |admin: &str, at: i64| decision(admin, Decision::Approve, at);
        assert_eq!(
            inv.decide_request("r1", &d("alice", T0 + 1), 2)
                .expect("decide"),
            Decided::Counted { approvals: 1 }
        );
        assert_eq!(
            inv.decide_request("r1", &d("alice", T0 + 2), 2)
                .expect("decide"),
            Decided::Repeated
        );
        assert_eq!(
            inv.decide_request("r1", &d("bob", T0 + 3), 2)
                .expect("decide"),
            Decided::Approved { approvals: 2 }
        );
        assert_eq!(
            inv.decide_request("r1", &d("carol", T0 + 4), 2)
                .expect("decide"),
            Decided::Closed(ApprovalStatus::Approved)
        );
        let who: Vec<String> = inv
            .decisions("r1")
            .expect("decisions")
            .into_iter()
            .map(|d| d.administrator)
            .collect();
        assert_eq!(who, ["alice", "bob"]);
        assert_eq!(
            inv.decisions("r1").expect("decisions")[0],
            d("alice", T0 + 1)
        );
        let text = err_text(inv.decide_request("nope", &d("alice", T0), 1), "NotFound");
        assert_eq!(text, "request nope not found");

        // Executed with its change, once.
        let suspend = change(key.id, KeyState::Active, Some(KeyState::Suspended), vec![]);
        let resume = change(key.id, KeyState::Suspended, Some(KeyState::Active), vec![]);
        inv.apply(&suspend).expect("suspend");
        inv.apply_approved(&resume, "r1", "resumed")
            .expect("execute");
        let done = inv.request("r1").expect("request").expect("r1");
        assert_eq!(
            (done.status, done.outcome.as_str(), done.closed_at),
            (ApprovalStatus::Executed, "resumed", Some(T0 + 100))
        );
        inv.apply(&suspend).expect("suspend again");
        let text = err_text(inv.apply_approved(&resume, "r1", "again"), "Conflict");
        assert_eq!(
            text,
            "conflict on request r1: expected approved, found another status (executed already?); nothing changed"
        );
        assert_eq!(
            inv.key_by_id(key.id).expect("key").expect("k").state,
            KeyState::Suspended,
            "the change of a request not approved is not applied"
        );

        // Denied, expired, closed.
        inv.create_request(&request("r2", "destroy", "tok/k", Some(key.id)))
            .expect("create");
        assert_eq!(
            inv.decide_request("r2", &decision("bob", Decision::Deny, T0 + 5), 2)
                .expect("deny"),
            Decided::Denied
        );
        let r2 = inv.request("r2").expect("request").expect("r2");
        assert_eq!(
            (r2.status, r2.outcome.as_str()),
            (ApprovalStatus::Denied, "denied by bob")
        );
        inv.create_request(&request("r3", "destroy", "tok/k", Some(key.id)))
            .expect("create");
        assert_eq!(
            inv.decide_request("r3", &d("alice", T0 + 3_600), 1)
                .expect("late"),
            Decided::Closed(ApprovalStatus::Expired)
        );
        assert!(inv.decisions("r3").expect("decisions").is_empty());
        inv.create_request(&request("r4", "export", "tok/k", None))
            .expect("create");
        assert!(inv
            .close_request(
                "r4",
                ApprovalStatus::Pending,
                ApprovalStatus::Cancelled,
                "withdrawn",
                T0 + 9
            )
            .expect("close"));
        assert!(!inv
            .close_request(
                "r4",
                ApprovalStatus::Pending,
                ApprovalStatus::Cancelled,
                "again",
                T0 + 10
            )
            .expect("close"));
        let r4 = inv.request("r4").expect("request").expect("r4");
        assert_eq!(
            (r4.status, r4.outcome.as_str(), r4.closed_at),
            (ApprovalStatus::Cancelled, "withdrawn", Some(T0 + 9))
        );
        let ids = |s: Option<ApprovalStatus>| -> Vec<String> {
            inv.requests(s)
                .expect("requests")
                .into_iter()
                .map(|r| r.id)
                .collect()
        };
        assert_eq!(ids(None), ["r1", "r2", "r3", "r4"]);
        assert_eq!(ids(Some(ApprovalStatus::Denied)), ["r2"]);
        assert!(ids(Some(ApprovalStatus::Pending)).is_empty());
    }

    pub fn a_grant_executes_its_approved_request(inv: &dyn Inventory) {
        let key = create(inv, "tok", "k", b"id-1");
        inv.create_request(&request("g1", "grant", "tok/k", Some(key.id)))
            .expect("create");
        let g = grant(key.id, "web", &[Operation::Sign]);
        let text = err_text(inv.grant_approved(&g, "admin", "g1", "granted"), "Conflict");
        assert!(text.contains("request g1"), "{text}");
        assert!(inv.grants(key.id).expect("grants").is_empty());
        inv.decide_request("g1", &decision("alice", Decision::Approve, T0 + 1), 1)
            .expect("approve");
        inv.grant_approved(&g, "admin", "g1", "granted")
            .expect("execute");
        assert_eq!(inv.grants(key.id).expect("grants"), vec![g]);
        assert_eq!(
            inv.request("g1").expect("request").expect("g1").status,
            ApprovalStatus::Executed
        );
    }

    pub fn a_sole_request_refuses_a_second_pending_one(inv: &dyn Inventory) {
        inv.create_sole_request(&request("s1", "destroy", "tok/k", None))
            .expect("first");
        let text = err_text(
            inv.create_sole_request(&request("s2", "destroy", "tok/k", None)),
            "Exists",
        );
        assert_eq!(
            text,
            "a pending destroy request on tok/k (request s1) already exists"
        );
        // Another target, or another action, is another request.
        inv.create_sole_request(&request("s3", "destroy", "tok/other", None))
            .expect("other target");
        inv.create_sole_request(&request("s4", "resume", "tok/k", None))
            .expect("other action");
        // Once the first expired, a new one may be made.
        let mut later = request("s5", "destroy", "tok/k", None);
        later.created_at = T0 + 3_600;
        later.expires_at = T0 + 7_200;
        inv.create_sole_request(&later).expect("after expiry");
        // Not a sole request: recorded beside the pending one.
        inv.create_request(&request("s6", "destroy", "tok/k", None))
            .expect("not sole");
    }

    pub fn object_owners_count_up_and_down(inv: &dyn Inventory) {
        let id = [3u8; 32];
        inv.add_object_owner("tok", &id, "web", T0).expect("add");
        inv.add_object_owner("tok", &id, "web", T0 + 1)
            .expect("add");
        inv.add_object_owner("tok", &id, "batch", T0).expect("add");
        inv.add_object_owner("a-tok", &[9u8; 32], "web", T0)
            .expect("add");
        let owners: Vec<(String, String, u32)> = inv
            .object_owners()
            .expect("owners")
            .into_iter()
            .map(|o| (o.token, o.application, o.count))
            .collect();
        assert_eq!(
            owners,
            [
                ("a-tok".to_owned(), "web".to_owned(), 1),
                ("tok".to_owned(), "batch".to_owned(), 1),
                ("tok".to_owned(), "web".to_owned(), 2)
            ]
        );
        inv.remove_object_owner("tok", &id, "web").expect("remove");
        inv.remove_object_owner("tok", &id, "web").expect("remove");
        let text = err_text(inv.remove_object_owner("tok", &id, "web"), "NotFound");
        assert_eq!(
            text,
            format!("object {} of \"web\" on \"tok\" not found", hex::encode(id))
        );
        assert_eq!(inv.object_owners().expect("owners").len(), 2);
        let text = err_text(inv.add_object_owner("tok", &[1; 31], "web", T0), "Invalid");
        assert_eq!(
            text,
            "invalid argument: an object identity has 32 bytes, not 31"
        );
        err_text(inv.add_object_owner("tok", &id, "", T0), "Invalid");
    }

    pub fn certificates_are_recorded_and_replaced(inv: &dyn Inventory) {
        let a = create(inv, "tok", "a", b"id-1");
        let b = create(inv, "tok", "b", b"id-2");
        let cert = |key_id: i64, sha: u8, not_after: i64| CertificateRecord {
            key_id,
            version: 1,
            subject: format!("CN=cert-{sha}"),
            not_before: T0,
            not_after,
            sha256: vec![sha; 32],
            imported_at: T0,
        };
        inv.record_certificate(&cert(a.id, 1, T0 + 20), false)
            .expect("record");
        inv.record_certificate(&cert(a.id, 2, T0 + 10), false)
            .expect("record");
        let mut again = cert(a.id, 1, T0 + 20);
        again.imported_at = T0 + 5;
        inv.record_certificate(&again, false).expect("again");
        inv.record_certificate(&cert(b.id, 3, T0 + 30), false)
            .expect("record");
        let listed = inv.certificates(Some(a.id)).expect("certificates");
        assert_eq!(listed, vec![cert(a.id, 2, T0 + 10), again.clone()]);
        assert_eq!(inv.certificates(None).expect("certificates").len(), 3);
        inv.record_certificate(&cert(a.id, 4, T0 + 40), true)
            .expect("replace");
        assert_eq!(
            inv.certificates(Some(a.id)).expect("certificates"),
            vec![cert(a.id, 4, T0 + 40)]
        );
        let mut unknown = cert(a.id, 5, T0);
        unknown.version = 2;
        let text = err_text(inv.record_certificate(&unknown, false), "NotFound");
        assert_eq!(text, format!("version 2 of key {} not found", a.id));
        let mut short = cert(a.id, 5, T0);
        short.sha256.pop();
        err_text(inv.record_certificate(&short, false), "Invalid");
    }

    pub fn fingerprints_are_written_once_and_replaced_from_the_stored_one(inv: &dyn Inventory) {
        let key = create(inv, "tok", "k", b"id-1");
        let (one, two, three) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        inv.set_fingerprint(key.id, 1, &one).expect("set");
        inv.set_fingerprint(key.id, 1, &one)
            .expect("the same again");
        let text = err_text(inv.set_fingerprint(key.id, 1, &two), "Conflict");
        assert_eq!(
            text,
            format!(
                "conflict on the fingerprint of version 1 of key {}: expected none recorded, found another one",
                key.id
            )
        );
        let text = err_text(inv.set_fingerprint(key.id, 2, &two), "NotFound");
        assert_eq!(text, format!("version 2 of key {} not found", key.id));
        err_text(inv.set_fingerprint(key.id, 1, &[1; 16]), "Invalid");
        err_text(inv.replace_fingerprint(key.id, 1, &two, &three), "Conflict");
        inv.replace_fingerprint(key.id, 1, &one, &three)
            .expect("replace");
        assert_eq!(
            inv.versions(key.id).expect("versions")[0].fingerprint,
            Some(three.to_vec())
        );
    }

    pub fn agent_keys_are_written_once(inv: &dyn Inventory) {
        assert_eq!(inv.agent_key("audit").expect("agent key"), None);
        inv.set_agent_key("audit", "tok", &[5; 32], T0)
            .expect("set");
        assert_eq!(
            inv.agent_key("audit").expect("agent key"),
            Some(("tok".to_owned(), vec![5; 32]))
        );
        let text = err_text(inv.set_agent_key("audit", "tok", &[6; 32], T0), "Exists");
        assert_eq!(text, "agent key \"audit\" already exists");
        err_text(inv.set_agent_key("", "tok", &[6; 32], T0), "Invalid");
    }

    pub fn touch_never_moves_the_last_use_back(inv: &dyn Inventory) {
        let key = create(inv, "tok", "k", b"id-1");
        inv.touch(key.id, T0 + 50).expect("touch");
        inv.touch(key.id, T0 + 20).expect("touch");
        assert_eq!(
            inv.key_by_id(key.id).expect("key").expect("k").last_used_at,
            Some(T0 + 50)
        );
        inv.touch(key.id, T0 + 70).expect("touch");
        assert_eq!(
            inv.key_by_id(key.id).expect("key").expect("k").last_used_at,
            Some(T0 + 70)
        );
        let text = err_text(inv.touch(9_999, T0), "NotFound");
        assert_eq!(text, "key 9999 not found");
    }
}

// ---- what only a shared store has --------------------------------------------

/// Runs `f` on `a` (with 0) and on `b` (with 1) at once: two agents.
fn race<T: Send>(
    a: &dyn Inventory,
    b: &dyn Inventory,
    f: impl Fn(&dyn Inventory, usize) -> T + Sync,
) -> (T, T) {
    let start = Barrier::new(2);
    std::thread::scope(|s| {
        let one = s.spawn(|| {
            start.wait();
            f(a, 0)
        });
        let two = s.spawn(|| {
            start.wait();
            f(b, 1)
        });
        (
            one.join().expect("the first agent's thread"),
            two.join().expect("the second agent's thread"),
        )
    })
}

/// How many sessions of the current database wait on a lock.
fn waiting_on_locks(client: &mut Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'",
            &[],
        )
        .expect("pg_stat_activity")
        .get(0)
}

/// Runs `run` while another session holds the lock `lock_sql` takes, and
/// releases it once `waiting` sessions wait on a lock: the callers in
/// `run` are then all in flight at once, so the store must order them
/// itself. A store that does not lock what the test holds fails here.
fn behind_lock<T: Send>(
    config: &Config,
    lock_sql: &str,
    params: &[&(dyn ToSql + Sync)],
    waiting: i64,
    run: impl FnOnce() -> T + Send,
) -> T {
    let mut holder = config.connect(NoTls).expect("the lock holder's session");
    let mut probe = config.connect(NoTls).expect("the probe's session");
    let mut tx = holder.transaction().expect("begin");
    tx.execute(lock_sql, params).expect("take the lock");
    std::thread::scope(|s| {
        let running = s.spawn(run);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = waiting_on_locks(&mut probe);
            if now >= waiting {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{now} sessions wait on a lock, not {waiting}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        tx.commit().expect("release the lock");
        running.join().expect("the callers' thread")
    })
}

/// One success and one refusal of `variant`, in either order; the text.
fn one_wins<T: std::fmt::Debug>(
    results: (Result<T, Error>, Result<T, Error>),
    variant: &str,
) -> String {
    match results {
        (Ok(_), lost) | (lost, Ok(_)) => err_text(lost, variant),
        (a, b) => panic!("neither agent succeeded: {a:?}, {b:?}"),
    }
}

/// The advisory lock under which the store appends to the audit chain
/// (`KWAU`), and the one under which it checks a sole request (`KWRQ`
/// with the hash of the action and target).
const AUDIT_LOCK: i64 = 0x4B57_4155;
const SOLE_LOCK: i32 = 0x4B57_5251;

#[test]
fn postgres_two_agents_racing_on_one_key_or_one_request_get_one_success() {
    let pg = PgServer::new();
    let config = pg.new_database();
    let a = pg_store(&config, "agent-a");
    let b = pg_store(&config, "agent-b");
    let key_lock = "SELECT 1 FROM keys WHERE id = $1 FOR UPDATE";

    // (a) The same transition at once: one moves the key, the other reads
    // the moved key and is refused.
    for round in 0..5 {
        let key = create(
            &a,
            "tok",
            &format!("k{round}"),
            format!("id-{round}").as_bytes(),
        );
        let mut suspend = change(key.id, KeyState::Active, Some(KeyState::Suspended), vec![]);
        suspend.trail = vec![record(&key.name, "suspend")];
        let results = behind_lock(&config, key_lock, &[&key.id], 2, || {
            race(&a, &b, |inv, _| inv.apply(&suspend))
        });
        let text = one_wins(results, "Conflict");
        assert_eq!(
            text,
            format!(
                "conflict on state of key {}: expected active, found suspended",
                key.id
            )
        );
        let moves = a.history(key.id).expect("history");
        assert_eq!(
            moves.len(),
            3,
            "created, version 1, one suspension: {moves:?}"
        );
    }

    // Racing rotations prepared from the same read: one version 2.
    for round in 0..3 {
        let key = create(
            &a,
            "tok",
            &format!("r{round}"),
            format!("r-{round}").as_bytes(),
        );
        let results = behind_lock(&config, key_lock, &[&key.id], 2, || {
            race(&a, &b, |inv, agent| {
                let id = format!("r-{round}-v2-{agent}");
                inv.apply(&change(
                    key.id,
                    KeyState::Active,
                    None,
                    vec![VersionChange::Add(backend(id.as_bytes(), 2))],
                ))
            })
        });
        let text = one_wins(results, "Conflict");
        assert_eq!(
            text,
            format!(
                "conflict on new version of key {}: expected version 2, found next version 3",
                key.id
            )
        );
        assert_eq!(a.versions(key.id).expect("versions").len(), 2);
    }

    // Racing creations of one name (with their trail records, so the
    // first holds its new row until the chain's lock is free): the second
    // waits on the unique index and is told the name is taken.
    for round in 0..3 {
        let name = format!("new{round}");
        let results = behind_lock(
            &config,
            "SELECT pg_advisory_xact_lock($1)",
            &[&AUDIT_LOCK],
            2,
            || {
                race(&a, &b, |inv, agent| {
                    let mut c = creation(draft("tok", &name), format!("{name}-{agent}").as_bytes());
                    c.trail = vec![record(&name, "create")];
                    inv.apply(&c)
                })
            },
        );
        let text = one_wins(results, "Exists");
        assert_eq!(
            text,
            format!("key \"{name}\" on token \"tok\" already exists")
        );
        assert_eq!(
            a.keys(&KeyFilter::default())
                .expect("keys")
                .iter()
                .filter(|k| k.name == name)
                .count(),
            1
        );
    }

    // Racing rotations of two keys onto one CKA_ID: the second waits on
    // the unique index and is told the CKA_ID is taken.
    let one = create(&a, "tok", "one", b"one-1");
    let two = create(&a, "tok", "two", b"two-1");
    let results = behind_lock(
        &config,
        "SELECT pg_advisory_xact_lock($1)",
        &[&AUDIT_LOCK],
        2,
        || {
            race(&a, &b, |inv, agent| {
                let key = if agent == 0 { &one } else { &two };
                let mut c = change(
                    key.id,
                    KeyState::Active,
                    None,
                    vec![VersionChange::Add(backend(b"shared", 2))],
                );
                c.trail = vec![record(&key.name, "rotate")];
                inv.apply(&c)
            })
        },
    );
    let text = one_wins(results, "Exists");
    assert_eq!(
        text,
        format!(
            "a key version with CKA_ID {} on token \"tok\" already exists",
            hex::encode(b"shared")
        )
    );

    // Racing requests with one id (on a key whose row the test holds, so
    // the first waits with its new row uncommitted): one is recorded, the
    // other is told the id is taken.
    let results = behind_lock(&config, key_lock, &[&one.id], 2, || {
        race(&a, &b, |inv, _| {
            inv.create_request(&request("same-id", "resume", "tok/one", Some(one.id)))
        })
    });
    assert_eq!(
        one_wins(results, "Exists"),
        "request same-id already exists"
    );

    // Racing sole requests on one target: one is recorded.
    for round in 0..3 {
        let target = format!("tok/sole{round}");
        let results = behind_lock(
            &config,
            "SELECT pg_advisory_xact_lock($1, hashtext($2 || chr(10) || $3))",
            &[&SOLE_LOCK, &"destroy", &target],
            2,
            || {
                race(&a, &b, |inv, agent| {
                    let id = format!("sole{round}-{agent}");
                    inv.create_sole_request(&request(&id, "destroy", &target, None))
                })
            },
        );
        let text = one_wins(results, "Exists");
        assert!(
            text.starts_with(&format!(
                "a pending destroy request on {target} (request sole{round}-"
            )),
            "{text}"
        );
        let pending = b
            .requests(Some(ApprovalStatus::Pending))
            .expect("requests")
            .into_iter()
            .filter(|r| r.target == target)
            .count();
        assert_eq!(pending, 1, "one pending request on {target}");
    }

    // (b) Eight administrators approve one request needing five, through
    // both agents at once: each decision counted once, and exactly one
    // caller sees the quorum reached.
    let id = "quorum";
    a.create_request(&request(id, "destroy", "tok/k0", None))
        .expect("create");
    let decided: Vec<Decided> = behind_lock(
        &config,
        "SELECT 1 FROM requests WHERE id = $1 FOR UPDATE",
        &[&id],
        2,
        || {
            std::thread::scope(|s| {
                let threads: Vec<_> = (0..8)
                    .map(|i| {
                        let inv: &dyn Inventory = if i % 2 == 0 { &a } else { &b };
                        s.spawn(move || {
                            inv.decide_request(
                                id,
                                &decision(&format!("admin-{i}"), Decision::Approve, T0 + 10),
                                5,
                            )
                            .expect("decide")
                        })
                    })
                    .collect();
                threads
                    .into_iter()
                    .map(|t| t.join().expect("decision thread"))
                    .collect()
            })
        },
    );
    let approved: Vec<&Decided> = decided
        .iter()
        .filter(|d| matches!(d, Decided::Approved { .. }))
        .collect();
    assert_eq!(
        approved,
        [&Decided::Approved { approvals: 5 }],
        "{decided:?}"
    );
    let mut counted: Vec<u32> = decided
        .iter()
        .filter_map(|d| match d {
            Decided::Counted { approvals } => Some(*approvals),
            _ => None,
        })
        .collect();
    counted.sort_unstable();
    assert_eq!(counted, [1, 2, 3, 4], "{decided:?}");
    let closed = decided
        .iter()
        .filter(|d| **d == Decided::Closed(ApprovalStatus::Approved))
        .count();
    assert_eq!(closed, 3, "{decided:?}");
    assert_eq!(a.decisions(id).expect("decisions").len(), 5);
    assert_eq!(
        b.request(id).expect("request").expect("quorum").status,
        ApprovalStatus::Approved
    );
    // Executed by one agent only: the other finds it executed.
    let key = a.key("tok", "k0").expect("key").expect("k0");
    let resume = change(key.id, KeyState::Suspended, Some(KeyState::Active), vec![]);
    let results = behind_lock(&config, key_lock, &[&key.id], 2, || {
        race(&a, &b, |inv, _| inv.apply_approved(&resume, id, "done"))
    });
    let text = one_wins(results, "Conflict");
    assert!(text.starts_with("conflict on state of key"), "{text}");
    assert_eq!(
        a.request(id).expect("request").expect("quorum").status,
        ApprovalStatus::Executed
    );
    assert_eq!(a.check().expect("check"), Vec::<String>::new());
}

/// The payloads `listener` receives until none comes for `quiet`.
fn heard(listener: &mut Client, quiet: Duration) -> Vec<String> {
    let mut notifications = listener.notifications();
    let mut heard = notifications.timeout_iter(quiet);
    let mut payloads = Vec::new();
    while let Some(n) = heard.next().expect("notification") {
        assert_eq!(n.channel(), CHANNEL);
        payloads.push(n.payload().to_owned());
    }
    payloads
}

/// The median and the 99th percentile of `times`.
fn spread(mut times: Vec<Duration>) -> (Duration, Duration) {
    times.sort_unstable();
    let at = |q: f64| times[((times.len() as f64 - 1.0) * q) as usize];
    (at(0.5), at(0.99))
}

#[test]
fn postgres_listeners_hear_committed_changes_and_nothing_of_refused_ones() {
    let pg = PgServer::new();
    let config = pg.new_database();
    let inv = pg_store(&config, "agent-a");
    let mut listener = config.connect(NoTls).expect("listener");
    listener
        .batch_execute("LISTEN keyward")
        .expect("LISTEN keyward");
    let quiet = Duration::from_millis(300);

    let key = create(&inv, "tok", "k", b"id-1");
    assert_eq!(heard(&mut listener, quiet), [Notice::Key(key.id).payload()]);

    // Refused after the key's row was changed and its notice queued (the
    // version's stored state is not the expected one): rolled back, so
    // nothing is heard.
    let refused = change(
        key.id,
        KeyState::Active,
        Some(KeyState::Suspended),
        vec![VersionChange::Move {
            version: 1,
            from: KeyState::Suspended,
            to: KeyState::Active,
        }],
    );
    err_text(inv.apply(&refused), "Conflict");
    let mut refused_create = creation(draft("tok", "k2"), b"id-2");
    refused_create
        .versions
        .push(VersionChange::Add(backend(b"id-1", 2)));
    err_text(inv.apply(&refused_create), "Exists");
    assert_eq!(heard(&mut listener, quiet), Vec::<String>::new());
    assert_eq!(inv.key("tok", "k2").expect("key"), None);

    inv.apply(&change(
        key.id,
        KeyState::Active,
        Some(KeyState::Suspended),
        vec![],
    ))
    .expect("suspend");
    inv.grant(&grant(key.id, "web", &[Operation::Sign]), "admin")
        .expect("grant");
    inv.set_fingerprint(key.id, 1, &[1; 32])
        .expect("fingerprint");
    inv.record_certificate(
        &CertificateRecord {
            key_id: key.id,
            version: 1,
            subject: "CN=k".into(),
            not_before: T0,
            not_after: T0 + 10,
            sha256: vec![4; 32],
            imported_at: T0,
        },
        false,
    )
    .expect("certificate");
    inv.revoke_grant(key.id, "web", "admin").expect("revoke");
    inv.create_request(&request("r1", "resume", "tok/k", Some(key.id)))
        .expect("request");
    inv.decide_request("r1", &decision("alice", Decision::Approve, T0 + 1), 1)
        .expect("decide");
    inv.add_object_owner("tok", &[2; 32], "web", T0)
        .expect("owner");
    inv.touch(key.id, T0 + 5).expect("touch");
    let k = Notice::Key(key.id).payload();
    let r = Notice::Request("r1".into()).payload();
    assert_eq!(
        heard(&mut listener, quiet),
        [
            k.clone(),
            k.clone(),
            k.clone(),
            k.clone(),
            k,
            r.clone(),
            r,
            Notice::Owners.payload()
        ],
        "one notice per write, none for touch"
    );
    // A decision that changes nothing, and a close that moves nothing, say
    // nothing.
    inv.decide_request("r1", &decision("alice", Decision::Approve, T0 + 2), 1)
        .expect("decide");
    assert!(!inv
        .close_request(
            "r1",
            ApprovalStatus::Pending,
            ApprovalStatus::Cancelled,
            "x",
            T0
        )
        .expect("close"));
    assert_eq!(heard(&mut listener, quiet), Vec::<String>::new());

    // Figures on the loopback server (printed, not judged).
    let mut applies = Vec::new();
    let mut state = KeyState::Suspended;
    for _ in 0..200 {
        let to = if state == KeyState::Active {
            KeyState::Suspended
        } else {
            KeyState::Active
        };
        let mut c = change(key.id, state, Some(to), vec![]);
        c.trail = vec![record("k", "lifecycle")];
        let t = Instant::now();
        inv.apply(&c).expect("apply");
        applies.push(t.elapsed());
        state = to;
    }
    let mut touches = Vec::new();
    let mut lookups = Vec::new();
    for i in 0..1_000 {
        let t = Instant::now();
        inv.touch(key.id, T0 + i).expect("touch");
        touches.push(t.elapsed());
        let t = Instant::now();
        inv.version_by_backend_id("tok", b"id-1")
            .expect("lookup")
            .expect("found");
        lookups.push(t.elapsed());
    }
    let (apply50, apply99) = spread(applies);
    let (touch50, touch99) = spread(touches);
    let (look50, look99) = spread(lookups);
    eprintln!(
        "loopback PostgreSQL {}: apply with one trail record p50 {apply50:?} p99 {apply99:?}; \
         touch p50 {touch50:?} p99 {touch99:?}; version_by_backend_id p50 {look50:?} p99 {look99:?}",
        pg.major()
    );
    let _ = heard(&mut listener, Duration::from_millis(50));
    assert_eq!(inv.check().expect("check"), Vec::<String>::new());

    // A value this build does not know (a newer agent's) is a data error
    // naming the row, the column and the value; the session goes on.
    listener
        .execute(
            "UPDATE keys SET purpose = 'teleportation' WHERE id = $1",
            &[&key.id],
        )
        .expect("a newer agent's purpose");
    match inv.key_by_id(key.id) {
        Err(e @ Error::Data(_)) => {
            let text = e.to_string();
            assert!(
                text.starts_with(
                    "inventory data invalid: key \"k\" on token \"tok\", stored purpose: "
                ) && text.contains("teleportation"),
                "{text}"
            );
        }
        other => panic!("expected a data error, got {other:?}"),
    }
    assert_eq!(inv.key("tok", "k2").expect("the session goes on"), None);
}

#[test]
fn postgres_store_is_unavailable_while_the_server_is_down_then_works_again() {
    let mut pg = PgServer::new();
    let config = pg.new_database();
    let inv = pg_store(&config, "agent-a");
    let key = create(&inv, "tok", "k", b"id-1");

    // The server ends the store's session (as a restart or an
    // administrator does): the call that finds out is told the store is
    // unavailable, and the next one makes a new session.
    let mut su = pg.superuser_client("postgres");
    let database = config.get_dbname().expect("database name").to_owned();
    for round in 0..5 {
        let ended: i64 = su
            .query_one(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE datname = $1 AND pid <> pg_backend_pid()) t",
                &[&database],
            )
            .expect("terminate the store's sessions")
            .get(0);
        assert_eq!(ended, 1, "the store has one session open");
        std::thread::sleep(Duration::from_millis(50 * round));
        err_text(inv.key_by_id(key.id), "Unavailable");
        assert_eq!(
            inv.key_by_id(key.id).expect("a new session"),
            Some(key.clone())
        );
    }
    drop(su);

    pg.stop();
    for attempt in 0..3 {
        let t = Instant::now();
        let result = inv.key_by_id(key.id);
        let took = t.elapsed();
        assert!(
            matches!(result, Err(Error::Unavailable(_))),
            "attempt {attempt}: {result:?}"
        );
        assert!(
            took < Duration::from_secs(5),
            "attempt {attempt} took {took:?}"
        );
        let t = Instant::now();
        err_text(
            inv.apply(&change(
                key.id,
                KeyState::Active,
                Some(KeyState::Suspended),
                vec![],
            )),
            "Unavailable",
        );
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    pg.start();
    // The same store, not reopened, reconnects by itself.
    assert_eq!(
        inv.key_by_id(key.id).expect("after the restart"),
        Some(key.clone())
    );
    let done = inv
        .apply(&change(
            key.id,
            KeyState::Active,
            Some(KeyState::Suspended),
            vec![],
        ))
        .expect("a change after the restart");
    assert_eq!(done.key.state, KeyState::Suspended);

    // A use is not flushed on its own, but the next lifecycle commit
    // flushes it with itself: both survive the server's crash.
    inv.touch(key.id, T0 + 77).expect("touch");
    inv.apply(&change(
        key.id,
        KeyState::Suspended,
        Some(KeyState::Active),
        vec![],
    ))
    .expect("resume");
    pg.kill();
    err_text(inv.key_by_id(key.id), "Unavailable");
    pg.start();
    let after = inv.key_by_id(key.id).expect("after the crash").expect("k");
    assert_eq!(
        (after.state, after.last_used_at),
        (KeyState::Active, Some(T0 + 77))
    );
    assert_eq!(inv.check().expect("check"), Vec::<String>::new());
}
