//! `keyward request approve|deny`: fetch the request, show it in full with
//! the digest computed here from its fields, refuse locally what is no
//! longer pending, sign the decision statement with the administrator's
//! key and send it; and `keyward admin-key show`.
//!
//! What is signed is [`decision_statement`] over the digest this side
//! computed from the request the agent showed: an agent (or anything in
//! between) that shows one request and records another gets a signature
//! that does not verify for the other. The printed request is the record
//! of what was decided; there is no interactive confirmation (scripts).

use keyward_domain::{ApprovalStatus, Decision};
use keyward_protocol::admin::{
    AdminRequest, AdminResponse, ApprovalRequest, KeyRequest, KeyResponse,
};
use keyward_protocol::approval::decision_statement;

use crate::admin::{Exit, Failure};
use crate::cli::DecideArgs;
use crate::output::{answer_failure, Output};
use crate::render;
use crate::signer::{self, KeySource, KeySpec};
use crate::time::format_time;

/// `keyward admin-key show KEY`: the roster's `public_key = "..."` line.
pub fn admin_key_show(spec: &KeySpec, json: bool) -> Output {
    match signer::public_key(spec) {
        Ok(key) => {
            let text = key.to_text();
            Output::success(if json {
                let algorithm = text.split(':').next().unwrap_or_default();
                render::json(&serde_json::json!({ "public_key": text, "algorithm": algorithm }))
            } else {
                format!("public_key = \"{text}\"\n")
            })
        }
        Err(f) => Output::failure(&f, json),
    }
}

/// Approves or denies request `args.id`; `ask` exchanges one admin
/// request with the agent; `now` is unix seconds.
pub fn decide(
    args: DecideArgs,
    decision: Decision,
    now: i64,
    json: bool,
    mut ask: impl FnMut(&AdminRequest) -> Result<AdminResponse, Failure>,
) -> Output {
    let show = AdminRequest::Key(KeyRequest::RequestShow {
        id: args.id.clone(),
    });
    let request = match ask(&show).and_then(|resp| shown_request(&show, &args.id, resp)) {
        Ok(r) => r,
        Err(f) => return Output::failure(&f, json),
    };
    let digest = request.content().digest();
    let record = render::pending(&request);
    // A failure from here on still prints the request (text): what was
    // looked at when the decision was refused.
    let fail = |f: Failure| {
        let mut out = Output::failure(&f, json);
        if !json {
            out.stdout = record.clone();
        }
        out
    };
    if let Err(f) = still_open(&request, decision, now) {
        return fail(f);
    }
    let statement = decision_statement(decision, &digest);
    let (signature, signed_by, mut stderr) = match sign_with(&args, &statement) {
        Ok(signed) => signed,
        Err(f) => return fail(f),
    };
    let send = AdminRequest::Key(KeyRequest::RequestDecide {
        id: request.id.clone(),
        decision,
        signature,
    });
    let answer = match ask(&send) {
        Ok(AdminResponse::Key(k)) => *k,
        Ok(resp) => return fail(answer_failure(&send, resp)),
        Err(f) => return fail(f),
    };
    if let KeyResponse::Pending(_) = answer {
        // A decision never opens a request; say so rather than exit 3.
        return fail(Failure::local(
            Exit::Error,
            "Unexpected",
            "unexpected answer from the agent: a new pending request to a decision",
        ));
    }
    if let KeyResponse::Plan(p) = &answer {
        // --dry-run: the decision was checked, not recorded.
        return Output::success(if json {
            render::key_json(&answer)
        } else {
            crate::safety::plan_text(p)
        });
    }
    let stdout = if json {
        // The request as it was shown (with its digest), and the agent's
        // answer: the request after the decision, or what was done.
        let answer = match &answer {
            KeyResponse::Requests(rs) => match rs.as_slice() {
                [one] => crate::json::request_view(one),
                _ => crate::json::key_view(&answer),
            },
            answer => crate::json::key_view(answer),
        };
        render::json(&serde_json::json!({
            "request": crate::json::request_view(&request),
            "digest": hex::encode(digest),
            "decision": decision.as_str(),
            "signed_by": signed_by,
            "key": args.key.as_ref().map(key_name),
            "answer": answer,
        }))
    } else {
        let by = match (&signed_by, &args.key) {
            (Some(k), Some(source)) => format!("signed by {k} ({})", key_name(source)),
            _ => "unsigned".to_owned(),
        };
        format!(
            "{record}\n{}: sent, {by}; the agent answered:\n\n{}",
            decision.as_str(),
            match &answer {
                // The decided request, in full as it was shown before.
                KeyResponse::Requests(rs) if rs.len() == 1 => render::pending(&rs[0]),
                answer => render::key_response(answer),
            }
        )
    };
    stderr.push_str(&format!(
        "keyward: {} of request {} recorded by the agent\n",
        decision.as_str(),
        render::clean(&request.id)
    ));
    Output {
        stdout,
        stderr,
        exit: Exit::Success,
    }
}

/// Refuses, before anything is signed, a decision on a request that is
/// no longer pending or has expired at `now`.
fn still_open(request: &ApprovalRequest, decision: Decision, now: i64) -> Result<(), Failure> {
    let why = if request.status != ApprovalStatus::Pending {
        format!("is {}, not pending", request.status.as_str())
    } else if request.expires_at <= now {
        format!("expired at {}", format_time(request.expires_at))
    } else {
        return Ok(());
    };
    Err(Failure::local(
        Exit::Conflict,
        "Conflict",
        format!(
            "request {} {why}: nothing to {}",
            render::clean(&request.id),
            decision.as_str()
        ),
    ))
}

/// A decision's signature as sent: the signature, the public key that made
/// it (roster form), and a note for standard error.
type Signed = (Option<Vec<u8>>, Option<String>, String);

/// `statement` signed with `args.key`; without a key, nothing signed and a
/// note saying so.
fn sign_with(args: &DecideArgs, statement: &[u8]) -> Result<Signed, Failure> {
    let Some(source) = &args.key else {
        return Ok((
            None,
            None,
            "keyward: no --key: the decision is sent unsigned (only an agent without a \
             roster accepts it)\n"
                .to_owned(),
        ));
    };
    let spec = KeySpec {
        source: source.clone(),
        module: args.module.clone(),
    };
    let s = signer::sign(&spec, statement)?;
    Ok((
        Some(s.signature),
        Some(s.public_key.to_text()),
        String::new(),
    ))
}

/// The one request `RequestShow` asked for, or why not.
fn shown_request(
    show: &AdminRequest,
    id: &str,
    resp: AdminResponse,
) -> Result<ApprovalRequest, Failure> {
    match resp {
        AdminResponse::Key(k) => match *k {
            KeyResponse::Requests(mut r) if r.len() == 1 && r[0].id == id => Ok(r.remove(0)),
            _ => Err(Failure::local(
                Exit::Error,
                "Unexpected",
                format!(
                    "the agent did not answer with request {}",
                    render::clean(id)
                ),
            )),
        },
        resp => Err(answer_failure(show, resp)),
    }
}

/// The key as the administrator named it, without a PIN file's contents
/// (only its path is in a URI).
fn key_name(source: &KeySource) -> String {
    match source {
        KeySource::File(p) => format!("key file {}", p.display()),
        KeySource::Pkcs11(uri) => {
            let mut parts = Vec::new();
            if let Some(t) = &uri.token {
                parts.push(format!("token {}", render::clean(t)));
            }
            if let Some(o) = &uri.object {
                parts.push(format!("object {}", render::clean(o)));
            }
            if let Some(id) = &uri.id {
                parts.push(format!("id {}", hex::encode(id)));
            }
            format!("pkcs11: {}", parts.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::tests::{key_file, ED25519_PEM, P256_PEM};
    use keyward_domain::Decision;
    use keyward_policy::AdministratorKey;
    use keyward_protocol::admin::{AdminErrorKind, DecisionInfo};

    const NOW: i64 = 1_800_000_000;

    fn request() -> ApprovalRequest {
        ApprovalRequest {
            id: "00112233445566778899aabbccddeeff".into(),
            action: "destroy".into(),
            target: "keyward/web-tls".into(),
            parameters: "{}".into(),
            requester: "alice".into(),
            reason: "retired".into(),
            created_at: NOW - 60,
            expires_at: NOW + 3600,
            status: ApprovalStatus::Pending,
            needed: 2,
            decisions: vec![],
            outcome: String::new(),
        }
    }

    fn requests(r: ApprovalRequest) -> AdminResponse {
        AdminResponse::Key(Box::new(KeyResponse::Requests(vec![r])))
    }

    fn args(key: Option<KeySource>) -> DecideArgs {
        DecideArgs {
            id: request().id,
            key,
            module: None,
        }
    }

    /// Runs `decide` against canned answers; returns what was sent too.
    fn run(
        args: DecideArgs,
        decision: Decision,
        answers: Vec<Result<AdminResponse, Failure>>,
        json: bool,
    ) -> (Vec<AdminRequest>, Output) {
        let mut sent = Vec::new();
        let mut answers = answers.into_iter();
        let out = decide(args, decision, NOW, json, |req| {
            sent.push(req.clone());
            answers.next().expect("asked once too often")
        });
        (sent, out)
    }

    #[test]
    fn a_signed_decision_is_over_the_digest_of_the_request_shown() {
        let dir = tempfile::tempdir().unwrap();
        for (pem, decision) in [(ED25519_PEM, Decision::Approve), (P256_PEM, Decision::Deny)] {
            let path = key_file(dir.path(), &format!("{decision:?}.pem"), pem, 0o600);
            let updated = ApprovalRequest {
                decisions: vec![DecisionInfo {
                    administrator: "bob".into(),
                    decision,
                    at: NOW,
                }],
                ..request()
            };
            let (sent, out) = run(
                args(Some(KeySource::File(path.clone()))),
                decision,
                vec![Ok(requests(request())), Ok(requests(updated))],
                false,
            );
            assert_eq!(out.exit, Exit::Success, "{out:?}");
            assert_eq!(
                sent[0],
                AdminRequest::Key(KeyRequest::RequestShow { id: request().id })
            );
            let AdminRequest::Key(KeyRequest::RequestDecide {
                id,
                decision: d,
                signature: Some(sig),
            }) = &sent[1]
            else {
                panic!("{:?}", sent[1])
            };
            assert_eq!((id.as_str(), *d), (request().id.as_str(), decision));
            let key = signer::public_key(&KeySpec {
                source: KeySource::File(path),
                module: None,
            })
            .unwrap();
            let digest = request().content().digest();
            key.verify(&decision_statement(decision, &digest), sig)
                .unwrap();
            // Not over another request's digest, nor the other decision.
            let other = ApprovalRequest {
                reason: "other".into(),
                ..request()
            };
            assert!(key
                .verify(
                    &decision_statement(decision, &other.content().digest()),
                    sig
                )
                .is_err());
            let flipped = match decision {
                Decision::Approve => Decision::Deny,
                Decision::Deny => Decision::Approve,
            };
            assert!(key
                .verify(&decision_statement(flipped, &digest), sig)
                .is_err());
            // The record: the request in full, the digest, who signed, the answer.
            assert!(
                out.stdout.starts_with(&render::pending(&request())),
                "{}",
                out.stdout
            );
            assert!(out.stdout.contains(&hex::encode(digest)));
            assert!(out.stdout.contains(&format!(
                "{}: sent, signed by {}",
                decision.as_str(),
                key.to_text()
            )));
            assert!(out
                .stdout
                .contains(&format!("decision:    bob {}", decision.as_str())));
        }
    }

    #[test]
    fn json_is_one_document_with_the_request_digest_and_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_file(dir.path(), "k.pem", ED25519_PEM, 0o600);
        let (_, out) = run(
            args(Some(KeySource::File(path))),
            Decision::Approve,
            vec![
                Ok(requests(request())),
                Ok(AdminResponse::Key(Box::new(KeyResponse::Done(
                    "approved".into(),
                )))),
            ],
            true,
        );
        assert_eq!(out.exit, Exit::Success);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["request"]["id"], request().id);
        assert_eq!(v["digest"], hex::encode(request().content().digest()));
        assert_eq!(v["decision"], "approve");
        assert!(v["signed_by"].as_str().unwrap().starts_with("ed25519:"));
        assert_eq!(v["answer"], serde_json::json!({ "done": "approved" }));
        assert_eq!(v["request"]["digest"], v["digest"]);
        assert_eq!(v["request"]["created_at"], "2027-01-15T07:59:00Z");
    }

    #[test]
    fn without_a_key_the_decision_is_unsigned_and_said_so() {
        let (sent, out) = run(
            args(None),
            Decision::Approve,
            vec![
                Ok(requests(request())),
                Ok(requests(ApprovalRequest {
                    status: ApprovalStatus::Executed,
                    ..request()
                })),
            ],
            false,
        );
        assert_eq!(out.exit, Exit::Success);
        assert_eq!(
            sent[1],
            AdminRequest::Key(KeyRequest::RequestDecide {
                id: request().id,
                decision: Decision::Approve,
                signature: None
            })
        );
        assert!(out.stderr.contains("sent unsigned"), "{out:?}");
        assert!(out.stdout.contains("approve: sent, unsigned"));
    }

    #[test]
    fn what_is_not_pending_is_refused_here_and_nothing_is_signed() {
        for r in [
            ApprovalRequest {
                status: ApprovalStatus::Executed,
                ..request()
            },
            ApprovalRequest {
                status: ApprovalStatus::Cancelled,
                ..request()
            },
            ApprovalRequest {
                expires_at: NOW,
                ..request()
            },
        ] {
            // A key that cannot be read: never touched.
            let key = Some(KeySource::File("/nonexistent/k.pem".into()));
            let (sent, out) = run(
                args(key),
                Decision::Approve,
                vec![Ok(requests(r.clone()))],
                false,
            );
            assert_eq!(sent.len(), 1, "{r:?}");
            assert_eq!(out.exit, Exit::Conflict);
            assert!(
                out.stderr.contains("not pending") || out.stderr.contains("expired at"),
                "{out:?}"
            );
            assert_eq!(out.stdout, render::pending(&r));
        }
    }

    #[test]
    fn a_bad_key_or_a_wrong_answer_sends_no_decision() {
        let dir = tempfile::tempdir().unwrap();
        let open = key_file(dir.path(), "open.pem", ED25519_PEM, 0o644);
        let (sent, out) = run(
            args(Some(KeySource::File(open))),
            Decision::Approve,
            vec![Ok(requests(request()))],
            false,
        );
        assert_eq!((sent.len(), out.exit), (1, Exit::Usage));
        assert!(out.stderr.contains("open to group or others"), "{out:?}");
        assert_eq!(out.stdout, render::pending(&request()));

        // The agent shows another request than the one asked for.
        let other = ApprovalRequest {
            id: "ff".into(),
            ..request()
        };
        let (sent, out) = run(
            args(None),
            Decision::Approve,
            vec![Ok(requests(other))],
            true,
        );
        assert_eq!((sent.len(), out.exit), (1, Exit::Error));
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["error"]["kind"], "unexpected");

        // Not found, and a refused decision: the agent's exit codes.
        let (sent, out) = run(
            args(None),
            Decision::Deny,
            vec![Ok(AdminResponse::KeyErr {
                kind: AdminErrorKind::NotFound,
                message: "no request".into(),
            })],
            false,
        );
        assert_eq!((sent.len(), out.exit), (1, Exit::NotFound));
        let (sent, out) = run(
            args(None),
            Decision::Approve,
            vec![
                Ok(requests(request())),
                Ok(AdminResponse::KeyErr {
                    kind: AdminErrorKind::Refused,
                    message: "a signature is needed".into(),
                }),
            ],
            false,
        );
        assert_eq!((sent.len(), out.exit), (2, Exit::Refused));
        assert!(out.stderr.contains("a signature is needed"));
        assert_eq!(out.stdout, render::pending(&request()));
    }

    #[test]
    fn admin_key_show_prints_the_roster_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_file(dir.path(), "k.pem", P256_PEM, 0o600);
        let spec = KeySpec {
            source: KeySource::File(path),
            module: None,
        };
        let out = admin_key_show(&spec, false);
        assert_eq!(out.exit, Exit::Success);
        let line = out.stdout.trim_end();
        let text = line
            .strip_prefix("public_key = \"")
            .and_then(|l| l.strip_suffix('"'))
            .unwrap();
        let key = AdministratorKey::parse(text).unwrap();
        assert!(
            text.starts_with("p256:04") && text.len() == 5 + 130,
            "{text}"
        );
        assert_eq!(key, signer::public_key(&spec).unwrap());
        let v: serde_json::Value =
            serde_json::from_str(&admin_key_show(&spec, true).stdout).unwrap();
        assert_eq!(
            (v["public_key"].as_str(), v["algorithm"].as_str()),
            (Some(text), Some("p256"))
        );
        let missing = KeySpec {
            source: KeySource::File(dir.path().join("none.pem")),
            module: None,
        };
        let out = admin_key_show(&missing, false);
        assert_eq!((out.exit, out.stdout.as_str()), (Exit::Usage, ""));
    }
}
