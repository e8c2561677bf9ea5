//! What the commands print: aligned tables and key/value blocks for
//! people, one JSON document for scripts. Pure functions of the agent's
//! answers, so they are tested with fixed data.
//!
//! Text: times in UTC as `YYYY-MM-DD HH:MM:SS`, `-` for none, CKA_IDs in
//! lowercase hex, control characters escaped (labels come from the HSM and
//! may be written by anyone who can create objects there).
//! JSON: the documents of [`crate::json`] (the `--json` contract, schemas
//! in `docs/json/`). Audit records are JSON lines instead: one compact
//! object per record.

use keyward_protocol::admin::{
    AnomalyKind, AppInfo, ApprovalRequest, AuditRecordInfo, AuditVerification, BackupAnswer,
    BackupContents, BackupMark, GrantInfo, KeyInfo, KeyReport, KeyResponse, Report, ShadowInfo,
    Status,
};
use serde::Serialize;
use serde_json::Value;

use crate::style::{self, plural, WIDTH};
use crate::time::{format_opt, format_time};

/// Bytes as lowercase hex; `-` for none.
pub fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "-".to_owned();
    }
    hex::encode(bytes)
}

/// A text value for a table cell or a line: `-` when empty, control
/// characters escaped so that nothing the agent relays can drive the
/// terminal or break the columns.
fn cell(text: &str) -> String {
    if text.is_empty() {
        return "-".to_owned();
    }
    clean(text)
}

/// `text` with control characters escaped (newlines too): for messages
/// the agent relays.
pub fn clean(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn opt_cell<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_owned(), |v| cell(&v.to_string()))
}

fn list(items: &[String]) -> String {
    cell(&items.join(","))
}

/// How a table's column fits in [`WIDTH`] columns by default (`--wide`
/// shows every column at full length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fit {
    /// Always shown, never cut: times, counts, states, ids to copy.
    Keep,
    /// Always shown; cut with `…` past this many characters, and further
    /// (not below its header) while the table is too wide.
    Cut(usize),
    /// Always shown (free text, the last column): cut first, to what the
    /// other columns leave of the line (not below its header).
    Fill,
    /// Shown with `--wide` only.
    Wide,
}

/// A column: its header and how it fits.
pub(crate) type Col = (&'static str, Fit);

/// The narrowest a [`Fit::Cut`] column becomes: its header, at least 4.
fn floor(header: &str) -> usize {
    header.chars().count().max(4)
}

/// Columns aligned on the widest cell, two spaces apart, no trailing
/// blanks. Cells are expected to be [`cell`]-clean. By default the
/// [`Fit::Wide`] columns are left out and long cells cut so that every
/// line fits [`WIDTH`] columns; with `--wide`, everything at full length.
pub(crate) fn table(cols: &[Col], rows: &[Vec<String>]) -> String {
    table_at(cols, rows, 0)
}

/// [`table`] for printing `indent` columns in (a section of `key show`,
/// of the report): it fits the rest of the width.
pub(crate) fn table_at(cols: &[Col], rows: &[Vec<String>], indent: usize) -> String {
    let wide = style::wide();
    let visible: Vec<usize> = (0..cols.len())
        .filter(|&i| wide || cols[i].1 != Fit::Wide)
        .collect();
    let header: Vec<String> = visible.iter().map(|&i| cols[i].0.to_owned()).collect();
    let mut rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            visible
                .iter()
                .map(|&i| {
                    let c = row.get(i).map_or("", String::as_str);
                    match cols[i].1 {
                        Fit::Cut(max) if !wide => shortened(c, max.max(floor(cols[i].0))),
                        Fit::Fill if !wide => shortened(c, WIDTH),
                        _ => c.to_owned(),
                    }
                })
                .collect()
        })
        .collect();
    let mut widths = Vec::new();
    for row in std::iter::once(&header).chain(&rows) {
        widen(&mut widths, row);
    }
    if !wide {
        let fits: Vec<Fit> = visible.iter().map(|&i| cols[i].1).collect();
        narrow(&fits, &header, &mut widths, WIDTH.saturating_sub(indent));
        cut_to(&mut rows, &widths);
    }
    std::iter::once(&header)
        .chain(&rows)
        .map(|row| table_line(row, &widths))
        .collect()
}

/// Narrows `widths` (of columns `fits` under `header`) until a line fits
/// `budget`: free text ([`Fit::Fill`]) gives first, then the widest
/// [`Fit::Cut`] column, a character at a time, none below its header.
fn narrow(fits: &[Fit], header: &[String], widths: &mut [usize], budget: usize) {
    let total = |w: &[usize]| w.iter().sum::<usize>() + 2 * w.len().saturating_sub(1);
    while total(widths) > budget {
        let can = |j: usize, fit: fn(Fit) -> bool| fit(fits[j]) && widths[j] > floor(&header[j]);
        let Some(j) = (0..fits.len())
            .filter(|&j| can(j, |f| f == Fit::Fill))
            .chain(
                (0..fits.len())
                    .filter(|&j| can(j, |f| matches!(f, Fit::Cut(_))))
                    .max_by_key(|&j| (widths[j], j)),
            )
            .next()
        else {
            return;
        };
        widths[j] -= 1;
    }
}

/// Cuts every cell of `rows` to its column's width.
fn cut_to(rows: &mut [Vec<String>], widths: &[usize]) {
    for row in rows {
        for (c, &w) in row.iter_mut().zip(widths) {
            if c.chars().count() > w {
                *c = shortened(c, w);
            }
        }
    }
}

/// `text` with its lines longer than [`WIDTH`] (prose: lists of keys, of
/// backups) wrapped at spaces, continued four columns further in; tables
/// fit already. As it is with `--wide`.
fn wrap_long(text: String) -> String {
    if style::wide() || text.lines().all(|l| l.chars().count() <= WIDTH) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.lines() {
        let body = line.trim_start();
        let lead = &line[..line.len() - body.len()];
        let cont = format!("{lead}    ");
        let mut cur = lead.to_owned();
        let mut len = lead.chars().count();
        let mut first = true;
        for word in body.split(' ') {
            let n = word.chars().count();
            if !first && len + 1 + n > WIDTH {
                out.push_str(&cur);
                out.push('\n');
                // A word too long for the indented line starts the next.
                if cont.len() + n > WIDTH {
                    cur.clear();
                } else {
                    cur.clone_from(&cont);
                }
                len = cur.chars().count();
                first = true;
            }
            if !first {
                cur.push(' ');
                len += 1;
            }
            cur.push_str(word);
            len += n;
            first = false;
        }
        out.push_str(&cur);
        out.push('\n');
    }
    out
}

/// Grows `widths` to fit `row`.
fn widen(widths: &mut Vec<usize>, row: &[String]) {
    if widths.len() < row.len() {
        widths.resize(row.len(), 0);
    }
    for (w, c) in widths.iter_mut().zip(row) {
        *w = (*w).max(c.chars().count());
    }
}

/// One table line: cells padded to `widths`, two spaces apart, no
/// trailing blanks, a final newline.
fn table_line(row: &[String], widths: &[usize]) -> String {
    let mut line = String::new();
    for (i, (c, w)) in row.iter().zip(widths).enumerate() {
        if i > 0 {
            line.push_str("  ");
        }
        line.push_str(c);
        let pad = w.saturating_sub(c.chars().count());
        line.extend(std::iter::repeat_n(' ', pad));
    }
    let mut line = line.trim_end().to_owned();
    line.push('\n');
    line
}

/// `label:` lines with the values aligned.
fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    pairs
        .iter()
        .map(|(k, v)| format!("{:width$}  {v}\n", format!("{k}:")))
        .collect()
}

/// `keyward status` as text.
pub fn status(s: &Status) -> String {
    let mut o = String::new();
    let mut line = |l: String| {
        o.push_str(&l);
        o.push('\n');
    };
    line(format!(
        "agent:     keyward-agent {}",
        cell(&s.agent_version)
    ));
    line(format!(
        "protocol:  application {}, admin {}",
        s.app_protocol, s.admin_protocol
    ));
    line(format!("pid:       {}", s.pid));
    line(format!("uptime:    {}", uptime(s.uptime_secs)));
    line(format!("socket:    {}", cell(&s.socket)));
    line(format!(
        "clients:   {}",
        plural(s.connections, "connection")
    ));
    line(format!(
        "requests:  {} pending approval",
        s.pending_requests
    ));
    line(format!("policy:    {}", policy_line(&s.policy)));
    let keys: Vec<String> = s
        .keys_by_state
        .iter()
        .map(|(state, n)| format!("{n} {state}"))
        .collect();
    line(format!(
        "keys:      {}",
        if keys.is_empty() {
            "none".to_owned()
        } else {
            keys.join(", ")
        }
    ));
    let a = &s.audit;
    line(format!(
        "audit:     {}, {}, {} unsealed, {}{}",
        plural(a.records, "record"),
        match (a.last_checkpoint_seq, a.last_checkpoint_at) {
            (Some(seq), Some(at)) => format!(
                "last checkpoint at record {seq} ({})",
                crate::time::format_time(at)
            ),
            _ => "no checkpoint yet".to_owned(),
        },
        a.unsealed,
        plural(a.write_failures, "write failure"),
        if a.failing {
            " — FAILING: admin and lifecycle actions are refused"
        } else {
            ""
        }
    ));
    line(format!(
        "scheduler: last run {}, next {}",
        format_opt(s.scheduler_last_run),
        format_opt(s.scheduler_next_run)
    ));
    line(format!("store:     {}", store_line(&s.store)));
    for e in &s.socket_events {
        line(format!("sockets:   {}", cell(e)));
    }
    line(format!("tokens:    {}", s.tokens.len()));
    for t in &s.tokens {
        line(String::new());
        line(format!("slot {}: {:?}", t.slot, t.label));
        line(format!(
            "  user PIN set:      {}",
            if t.user_pin_initialized { "yes" } else { "no" }
        ));
        line(format!(
            "  allow_init_token:  {}",
            if t.allow_init_token { "yes" } else { "no" }
        ));
        line(format!("  backend library:   {}", cell(&t.backend_library)));
        if !t.backend_library_description.is_empty() {
            line(format!(
                "                     {} {}.{}",
                cell(&t.backend_library_description),
                t.backend_library_version.major,
                t.backend_library_version.minor
            ));
        }
        if t.backend_present {
            line(format!(
                "  backend token:     {:?} ({} {}, serial {})",
                t.backend_label,
                cell(&t.backend_manufacturer),
                cell(&t.backend_model),
                cell(&t.backend_serial)
            ));
        }
        if let Some(e) = &t.backend_error {
            line(format!("  backend error:     {}", cell(e)));
        }
    }
    o
}

/// The status's store line: where, and for a shared store whether the
/// agent's view is in force.
fn store_line(st: &keyward_protocol::admin::StoreHealth) -> String {
    let mut out = format!("{} {}", st.kind, cell(&st.location));
    if let Some(host) = &st.host {
        out.push_str(&format!(" as host {}", cell(host)));
    }
    if let (Some(lease), Some(silent)) = (st.lease_secs, st.silent_ms) {
        if st.in_force {
            out.push_str(&format!(", heard from {silent} ms ago (lease {lease} s)"));
        } else {
            out.push_str(&format!(
                ", SILENT for {} s (lease {lease} s): protect operations and admin actions are refused",
                silent / 1000
            ));
        }
    }
    out
}

/// The policy in force in one line: file, mode, digest, counts.
fn policy_line(p: &keyward_protocol::admin::PolicySummary) -> String {
    format!(
        "{} ({} mode{}), {}, {}, {}",
        p.file
            .as_deref()
            .map_or("the built-in lab policy".to_owned(), cell),
        cell(&p.mode),
        p.sha256.as_deref().map_or(String::new(), |h| format!(
            ", sha256 {}",
            &h[..h.len().min(16)]
        )),
        plural(p.applications, "application"),
        plural(p.classes, "class"),
        plural(p.administrators, "administrator")
    )
}

/// `keyward policy show`: the summary, then the file's text.
pub fn policy_shown(p: &keyward_protocol::admin::PolicyInForce) -> String {
    let mut out = format!("policy: {}\n", policy_line(&p.summary));
    if let Some(h) = &p.summary.sha256 {
        out.push_str(&format!("sha256: {h}\n"));
    }
    if let Some(text) = &p.text {
        out.push('\n');
        out.push_str(text);
        if !text.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h {m}m {s}s")
    } else if h > 0 {
        format!("{h}h {m}m {s}s")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// A key-management answer as text (whatever the command was: the answer
/// says what it is).
pub fn key_response(resp: &KeyResponse) -> String {
    match resp {
        KeyResponse::Key(k) => key(k),
        KeyResponse::Keys(keys) if keys.is_empty() => "no keys\n".to_owned(),
        KeyResponse::Keys(keys) => key_table(keys),
        KeyResponse::Grants(g) if g.is_empty() => "no grants\n".to_owned(),
        KeyResponse::Grants(g) => grant_table(g, true, 0),
        KeyResponse::Apps(a) if a.is_empty() => "no applications\n".to_owned(),
        KeyResponse::Apps(a) => app_table(a),
        KeyResponse::Pending(p) => pending(p),
        KeyResponse::Requests(r) if r.is_empty() => "no approval requests\n".to_owned(),
        KeyResponse::Requests(r) => request_table(r, 0),
        KeyResponse::Verified {
            key,
            version,
            detail,
        } => format!(
            "verified: {} version {version}: {}\n",
            cell(key),
            cell(detail)
        ),
        KeyResponse::Shadows(s) if s.is_empty() => "no shadow keys\n".to_owned(),
        KeyResponse::Shadows(s) => shadow_table(s),
        KeyResponse::Done(text) => format!("{}\n", cell(text)),
        KeyResponse::Policy(p) => policy_shown(p),
        KeyResponse::Backup(b) => backup(b),
        KeyResponse::Distribution(d) => distribution(d),
        KeyResponse::Cert(c) => certificate(c),
        KeyResponse::Plan(p) => crate::safety::plan_text(p),
    }
}

/// A distribution answer as text, where it reaches the generic rendering.
pub(crate) fn distribution(d: &keyward_protocol::distribution::DistResponse) -> String {
    use keyward_protocol::distribution::{sha256_hex, DistResponse};
    match d {
        DistResponse::PublicKey { key, version, spki } => format!(
            "public key of {} version {version}: SPKI SHA-256 {}\n",
            clean(key),
            sha256_hex(spki)
        ),
        DistResponse::ExportFile { id, file } => format!(
            "export file of request {}: {} bytes, SHA-256 {}\n",
            clean(id),
            file.len(),
            sha256_hex(file)
        ),
    }
}

/// A certificate answer in words.
pub(crate) fn certificate(c: &keyward_protocol::certificate::CertResponse) -> String {
    use keyward_protocol::certificate::CertResponse;
    use keyward_protocol::distribution::sha256_hex;
    match c {
        CertResponse::Csr { key, version, der } => format!(
            "certificate request of {} version {version} (SHA-256 {})\n",
            clean(key),
            sha256_hex(der)
        ),
        CertResponse::Certificate {
            key,
            version,
            der,
            subject,
            not_after,
            stored,
            replaced,
        } => format!(
            "certificate of {} version {version}: {}, valid until {} (SHA-256 {}){}\n",
            clean(key),
            clean(subject),
            crate::time::format_time(i64::try_from(*not_after).unwrap_or(i64::MAX)),
            sha256_hex(der),
            match (stored, replaced) {
                (false, _) => String::new(),
                (true, 0) => ", stored on the token".to_owned(),
                (true, n) => format!(", stored on the token ({n} replaced)"),
            }
        ),
    }
}

/// A backup answer as text.
pub fn backup(b: &BackupAnswer) -> String {
    match b {
        BackupAnswer::File { contents, .. } => backup_contents(contents),
        BackupAnswer::Status(s) => {
            let mut out = fields(&[
                ("token", cell(&s.token)),
                (
                    "backup key",
                    s.key_check
                        .as_deref()
                        .map_or("none".to_owned(), |c| c.chars().take(16).collect()),
                ),
                ("on the token", yes_no(s.present)),
                (
                    "threshold",
                    format!(
                        "{} of {}",
                        s.threshold,
                        plural(s.custodians.len(), "custodian")
                    ),
                ),
                (
                    "made",
                    s.created_at
                        .map_or("-".to_owned(), crate::time::format_time),
                ),
                ("shares submitted", s.submitted.to_string()),
            ]);
            if !s.custodians.is_empty() {
                let rows: Vec<Vec<String>> = s
                    .custodians
                    .iter()
                    .map(|(name, index, digest)| vec![cell(name), index.to_string(), cell(digest)])
                    .collect();
                out.push_str(&table(
                    &[
                        ("CUSTODIAN", Fit::Cut(24)),
                        ("SHARE", Fit::Keep),
                        ("DIGEST", Fit::Keep),
                    ],
                    &rows,
                ));
            }
            out
        }
        BackupAnswer::Share {
            custodian, digest, ..
        } => format!("share of {} (digest {})\n", cell(custodian), cell(digest)),
        BackupAnswer::Drill { contents, results } => {
            let mut out = backup_contents(contents);
            let rows: Vec<Vec<String>> = results
                .iter()
                .map(|r| {
                    vec![
                        cell(&r.name),
                        r.version.to_string(),
                        (if r.ok { "works" } else { "FAILED" }).to_owned(),
                        cell(&r.detail),
                    ]
                })
                .collect();
            out.push_str(&table(
                &[
                    ("KEY", Fit::Cut(30)),
                    ("VERSION", Fit::Keep),
                    ("DRILL", Fit::Keep),
                    ("DETAIL", Fit::Fill),
                ],
                &rows,
            ));
            let failed = results.iter().filter(|r| !r.ok).count();
            out.push_str(&format!(
                "drill: {} tried, {failed} failed\n",
                plural(results.len(), "key version")
            ));
            out
        }
        BackupAnswer::Submitted {
            have,
            need,
            rebuilt,
        } => {
            if *rebuilt {
                format!(
                    "{have} of {}: the backup key is rebuilt in the HSM\n",
                    plural(*need, "share")
                )
            } else {
                format!(
                    "{have} of {} submitted; the backup key needs {need}\n",
                    plural(*need, "share")
                )
            }
        }
    }
}

/// What a backup file holds.
fn backup_contents(c: &BackupContents) -> String {
    let mut out = fields(&[
        ("backup", cell(&c.id)),
        ("token", cell(&c.token)),
        ("made", crate::time::format_time(c.created_at)),
        ("backup key", c.key_check.chars().take(16).collect()),
    ]);
    let rows: Vec<Vec<String>> = c
        .keys
        .iter()
        .map(|k| {
            let versions: Vec<String> = k.versions.iter().map(u32::to_string).collect();
            vec![cell(&k.name), k.state.to_string(), versions.join(",")]
        })
        .collect();
    if !rows.is_empty() {
        out.push_str(&table(
            &[
                ("KEY", Fit::Cut(40)),
                ("STATE", Fit::Keep),
                ("VERSIONS", Fit::Cut(40)),
            ],
            &rows,
        ));
    }
    for (name, why) in &c.absent {
        out.push_str(&format!(
            "not in the backup: {}: {}\n",
            cell(name),
            cell(why)
        ));
    }
    out
}

fn key_table(keys: &[KeyInfo]) -> String {
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                cell(&k.name),
                cell(&k.token),
                cell(k.state.as_str()),
                cell(&k.class),
                cell(&k.algorithm.to_string()),
                cell(&k.owner),
                k.versions
                    .iter()
                    .map(|v| v.version)
                    .max()
                    .map_or_else(|| "-".to_owned(), |v| v.to_string()),
                format_time(k.created_at),
                format_opt(k.protect_until),
            ]
        })
        .collect();
    table(
        &[
            ("NAME", Fit::Cut(32)),
            ("TOKEN", Fit::Cut(16)),
            ("STATE", Fit::Keep),
            ("CLASS", Fit::Cut(16)),
            ("ALGORITHM", Fit::Cut(12)),
            ("OWNER", Fit::Wide),
            ("VERSION", Fit::Keep),
            ("CREATED", Fit::Keep),
            ("PROTECT UNTIL", Fit::Wide),
        ],
        &rows,
    )
}

/// `keyward key show`: the record (with its recovery window when one was
/// opened), then versions, grants and history.
fn key(k: &KeyInfo) -> String {
    wrap_long(key_text(k))
}

/// What a command that changed a key prints: the key's state, its live
/// versions with their `CKA_ID`s, its dates and reason code, and where to
/// see the rest (`key show` prints everything).
pub fn key_changed(k: &KeyInfo) -> String {
    let mut out = format!(
        "{} on token {}: {}\n",
        cell(&k.name),
        cell(&k.token),
        k.state.as_str()
    );
    for v in k.versions.iter().rev().filter(|v| v.destroyed_at.is_none()) {
        out.push_str(&format!(
            "  version {}:      {}, CKA_ID {}\n",
            v.version,
            v.state.as_str(),
            hex(&v.backend_id)
        ));
    }
    for (what, at) in [
        ("protect until", k.protect_until),
        ("process until", k.process_until),
        ("next rotation", k.next_rotation),
    ] {
        if let Some(at) = at {
            out.push_str(&format!("  {what}:  {}\n", format_time(at)));
        }
    }
    if let Some(code) = k.reason_code {
        out.push_str(&format!("  reason code:    {code}\n"));
    }
    out.push_str(&format!(
        "(keyward key show {} prints everything about it)\n",
        cell(&k.name)
    ));
    wrap_long(out)
}

fn key_text(k: &KeyInfo) -> String {
    let mut out = key_record(k);
    section(&mut out, "versions", versions_table(k));
    if k.state == keyward_policy::KeyState::Destroyed {
        section(
            &mut out,
            "held by backups (retire them for the destruction to be final)",
            held_by(&k.held_by_backups),
        );
    }
    section(
        &mut out,
        "grants",
        if k.grants.is_empty() {
            "none".to_owned()
        } else {
            grant_table(&k.grants, false, SECTION)
        },
    );
    if !k.certificates.is_empty() {
        section(&mut out, "certificates", certificates_table(k));
    }
    section(&mut out, "history", history_table(k));
    out
}

/// The certificates stored beside the key's versions, as a table.
fn certificates_table(k: &KeyInfo) -> String {
    let rows: Vec<Vec<String>> = k
        .certificates
        .iter()
        .map(|c| {
            vec![
                c.version.to_string(),
                cell(&c.subject),
                format_time(c.not_before),
                format_time(c.not_after),
                cell(&c.sha256),
            ]
        })
        .collect();
    table_at(
        &[
            ("VERSION", Fit::Keep),
            ("SUBJECT", Fit::Cut(40)),
            ("NOT BEFORE", Fit::Wide),
            ("NOT AFTER", Fit::Keep),
            ("SHA-256", Fit::Cut(16)),
        ],
        &rows,
        SECTION,
    )
}

/// How far a section of `keyward key show` is indented.
const SECTION: usize = 2;

/// A titled, indented section of `keyward key show`.
fn section(out: &mut String, title: &str, body: String) {
    out.push('\n');
    out.push_str(title);
    out.push_str(":\n");
    for line in body.lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
}

/// The key's record, one field a line.
fn key_record(k: &KeyInfo) -> String {
    let mut record = vec![
        ("name", cell(&k.name)),
        ("token", cell(&k.token)),
        ("state", cell(k.state.as_str())),
        ("owner", cell(&k.owner)),
        ("purpose", cell(k.purpose.as_str())),
        ("class", cell(&k.class)),
        ("algorithm", cell(&k.algorithm.to_string())),
        ("scope", list(&k.scope)),
        (
            "backup",
            if k.backup_allowed {
                "allowed"
            } else {
                "not allowed"
            }
            .to_owned(),
        ),
        ("created", format_time(k.created_at)),
        ("activated", format_opt(k.activated_at)),
        ("rotated", format_opt(k.rotated_at)),
        ("deactivated", format_opt(k.deactivated_at)),
        ("protect until", format_opt(k.protect_until)),
        ("process until", format_opt(k.process_until)),
        ("next rotation", format_opt(k.next_rotation)),
        (
            "last used",
            format!(
                "{} (updated every {} s)",
                format_opt(k.last_used_at),
                keyward_protocol::admin::LAST_USE_EVERY_SECS
            ),
        ),
    ];
    if let Some(code) = k.reason_code {
        // Beside the state it explains.
        record.insert(
            3,
            (
                "reason code",
                format!("{code} (RFC 5280 code {})", code.number()),
            ),
        );
    }
    if let Some(until) = k.recovery_until {
        record.push((
            "recovery until",
            format!("{} (verify and decrypt only)", format_time(until)),
        ));
    }
    fields(&record)
}

/// The key's versions, as a table.
fn versions_table(k: &KeyInfo) -> String {
    let versions: Vec<Vec<String>> = k
        .versions
        .iter()
        .map(|v| {
            vec![
                v.version.to_string(),
                hex(&v.backend_id),
                cell(v.state.as_str()),
                format_time(v.created_at),
                format_opt(v.deactivated_at),
                format_opt(v.destroyed_at),
            ]
        })
        .collect();
    if versions.is_empty() {
        return "none".to_owned();
    }
    table_at(
        &[
            ("VERSION", Fit::Keep),
            // Whole: it is compared with what PKCS#11 tools show.
            ("CKA_ID", Fit::Keep),
            ("STATE", Fit::Keep),
            ("CREATED", Fit::Wide),
            ("DEACTIVATED", Fit::Keep),
            ("DESTROYED", Fit::Wide),
        ],
        &versions,
        SECTION,
    )
}

/// The key's history, as a table.
fn history_table(k: &KeyInfo) -> String {
    let history: Vec<Vec<String>> = k
        .history
        .iter()
        .map(|h| {
            vec![
                format_time(h.at),
                opt_cell(&h.version),
                opt_cell(&h.from),
                cell(h.to.as_str()),
                cell(&h.actor),
                cell(&h.reason),
            ]
        })
        .collect();
    if history.is_empty() {
        return "none".to_owned();
    }
    table_at(
        &[
            ("AT", Fit::Keep),
            ("VERSION", Fit::Keep),
            ("FROM", Fit::Keep),
            ("TO", Fit::Keep),
            ("ACTOR", Fit::Cut(20)),
            ("REASON", Fit::Fill),
        ],
        &history,
        SECTION,
    )
}

/// Backups that hold a destroyed key: one a line, its id and when it was
/// made; `none` for none.
fn held_by(held: &[BackupMark]) -> String {
    if held.is_empty() {
        return "none".to_owned();
    }
    held.iter()
        .map(|b| format!("{} made {}\n", cell(&b.id), format_time(b.at)))
        .collect()
}

/// A backup as `<first 16 hex of its id> <date>`.
fn backup_mark(b: &BackupMark) -> String {
    format!(
        "{} {}",
        cell(&b.id.chars().take(16).collect::<String>()),
        format_time(b.at)
    )
}

/// The report table's backup cell: `MISSING` (the class wants a backup of
/// the current version and there is none), `held:N` (a destroyed key in N
/// backups), `ok` (backed up), `-` (no backup wanted or held).
fn backup_cell(k: &KeyReport) -> String {
    if k.backup_missing {
        "MISSING".to_owned()
    } else if !k.held_by_backups.is_empty() {
        format!("held:{}", k.held_by_backups.len())
    } else if k.last_backup.is_some() && k.state != keyward_policy::KeyState::Destroyed {
        "ok".to_owned()
    } else {
        "-".to_owned()
    }
}

/// The report's backup section: keys that want a backup and have none,
/// drills that failed, destroyed keys still held by backups.
fn backups(keys: &[KeyReport]) -> String {
    let name = |k: &KeyReport| format!("{}/{}", cell(&k.token), cell(&k.name));
    let missing: Vec<String> = keys.iter().filter(|k| k.backup_missing).map(name).collect();
    let failed: Vec<String> = keys
        .iter()
        .filter(|k| k.last_drill.as_ref().is_some_and(|d| !d.ok))
        .map(name)
        .collect();
    let held: Vec<&KeyReport> = keys
        .iter()
        .filter(|k| !k.held_by_backups.is_empty())
        .collect();
    if missing.is_empty() && failed.is_empty() && held.is_empty() {
        return "backups: every key that wants one has one; no destroyed key is held\n".to_owned();
    }
    let mut out = "backups:\n".to_owned();
    if !missing.is_empty() {
        out.push_str(&format!(
            "  need a backup of their current version: {}\n",
            cell(&missing.join(", "))
        ));
    }
    if !failed.is_empty() {
        out.push_str(&format!(
            "  failed their last drill: {}\n",
            cell(&failed.join(", "))
        ));
    }
    for k in held {
        out.push_str(&format!(
            "  destroyed {} still held by backups (retire them): {}\n",
            name(k),
            k.held_by_backups
                .iter()
                .map(|b| format!("{} ({})", cell(&b.id), format_time(b.at)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    out
}

fn grant_table(grants: &[GrantInfo], with_key: bool, indent: usize) -> String {
    let rows: Vec<Vec<String>> = grants
        .iter()
        .map(|g| {
            let mut row = vec![
                cell(&g.application),
                list(
                    &g.operations
                        .iter()
                        .map(|o| o.to_string())
                        .collect::<Vec<_>>(),
                ),
                format_opt(g.expires_at),
                cell(&g.source),
            ];
            if with_key {
                row.insert(0, cell(&g.key));
            }
            row
        })
        .collect();
    let cols: &[Col] = &[
        ("KEY", Fit::Cut(24)),
        ("APPLICATION", Fit::Cut(20)),
        ("OPERATIONS", Fit::Cut(40)),
        ("EXPIRES", Fit::Keep),
        ("SOURCE", Fit::Keep),
    ];
    table_at(if with_key { cols } else { &cols[1..] }, &rows, indent)
}

fn app_table(apps: &[AppInfo]) -> String {
    let rows: Vec<Vec<String>> = apps
        .iter()
        .map(|a| {
            vec![
                cell(&a.name),
                opt_cell(&a.uid),
                opt_cell(&a.gid),
                opt_cell(&a.exe),
                list(&a.keys),
            ]
        })
        .collect();
    table(
        &[
            ("NAME", Fit::Cut(24)),
            ("UID", Fit::Keep),
            ("GID", Fit::Keep),
            ("EXE", Fit::Cut(32)),
            ("KEYS", Fit::Cut(40)),
        ],
        &rows,
    )
}

fn shadow_table(shadows: &[ShadowInfo]) -> String {
    let rows: Vec<Vec<String>> = shadows
        .iter()
        .map(|s| {
            vec![
                cell(&s.token),
                hex(&s.backend_id),
                cell(&s.label),
                cell(&s.class),
                cell(&s.key_type),
                cell(&s.finding),
            ]
        })
        .collect();
    table(
        &[
            ("TOKEN", Fit::Cut(16)),
            ("CKA_ID", Fit::Cut(24)),
            ("LABEL", Fit::Cut(24)),
            ("CLASS", Fit::Keep),
            ("KEY TYPE", Fit::Keep),
            ("FINDING", Fit::Fill),
        ],
        &rows,
    )
}

/// An approval request in full; the id comes first, the digest last. The
/// digest is computed here from the request's fields (as the agent does
/// when it checks a signature), never taken from the agent: it is what an
/// administrator signs.
pub fn pending(p: &ApprovalRequest) -> String {
    let mut pairs = vec![
        ("request", cell(&p.id)),
        ("action", cell(&p.action)),
        ("target", cell(&p.target)),
        ("parameters", parameters(&p.parameters)),
        ("requester", cell(&p.requester)),
        ("status", cell(p.status.as_str())),
        ("created", format_time(p.created_at)),
        ("expires", format_time(p.expires_at)),
        ("reason", cell(&p.reason)),
        ("needed", needed(p)),
    ];
    if p.decisions.is_empty() {
        pairs.push(("decisions", "-".to_owned()));
    }
    for d in &p.decisions {
        pairs.push((
            "decision",
            format!(
                "{} {} {}",
                cell(&d.administrator),
                d.decision.as_str(),
                format_time(d.at)
            ),
        ));
    }
    pairs.push(("outcome", cell(&p.outcome)));
    pairs.push(("digest", hex::encode(p.content().digest())));
    fields(&pairs)
}

/// How many approvals the request needs, and how many it has.
fn needed(p: &ApprovalRequest) -> String {
    let approvals = approvals(p);
    if p.needed == 0 {
        format!("1 (no roster: one approval carries it out; {approvals} so far)")
    } else {
        format!("{} ({approvals} so far)", p.needed)
    }
}

fn approvals(p: &ApprovalRequest) -> usize {
    p.decisions
        .iter()
        .filter(|d| d.decision == keyward_domain::Decision::Approve)
        .count()
}

/// An action's parameters (canonical JSON) on one line, spaced for
/// reading: `{"data_sha256": "ab…", "mechanism": "CKM_ECDSA"}`; `-` for
/// none; as given (escaped) when it is not JSON.
fn parameters(raw: &str) -> String {
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(m)) if m.is_empty() => "-".to_owned(),
        Ok(v) => clean(&json_one_line(&v)),
        Err(_) => cell(raw),
    }
}

fn json_one_line(v: &Value) -> String {
    match v {
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), json_one_line(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(json_one_line).collect::<Vec<_>>().join(", ")
        ),
        v => v.to_string(),
    }
}

/// `text` cut to `max` characters with `…` (a table cell; `--wide` and
/// `request show` have the whole).
fn shortened(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// Approval requests, one row each.
fn request_table(requests: &[ApprovalRequest], indent: usize) -> String {
    let rows: Vec<Vec<String>> = requests
        .iter()
        .map(|r| {
            let decisions: Vec<String> = r
                .decisions
                .iter()
                .map(|d| format!("{}:{}", d.administrator, d.decision.as_str()))
                .collect();
            vec![
                cell(&r.id),
                cell(&r.action),
                cell(&r.target),
                parameters(&r.parameters),
                cell(&r.requester),
                cell(r.status.as_str()),
                format!("{}/{}", approvals(r), r.needed.max(1)),
                list(&decisions),
                format_time(r.expires_at),
                cell(&r.reason),
                cell(&r.outcome),
            ]
        })
        .collect();
    table_at(
        &[
            ("REQUEST", Fit::Keep),
            ("ACTION", Fit::Cut(16)),
            ("TARGET", Fit::Cut(28)),
            ("PARAMETERS", Fit::Wide),
            ("REQUESTER", Fit::Wide),
            ("STATUS", Fit::Keep),
            ("APPROVALS", Fit::Keep),
            ("DECISIONS", Fit::Wide),
            ("EXPIRES", Fit::Keep),
            ("REASON", Fit::Wide),
            ("OUTCOME", Fit::Wide),
        ],
        &rows,
        indent,
    )
}

/// `keyward audit verify` as text: the counts, then `intact` or the first
/// bad record.
pub fn verification(v: &AuditVerification) -> String {
    let mut rows = vec![
        ("records checked", v.records.to_string()),
        ("head seq", v.head_seq.to_string()),
        ("checkpoints verified", v.checkpoints_ok.to_string()),
        ("sealed through", v.sealed_through.to_string()),
        ("unsealed", v.unsealed.to_string()),
    ];
    if v.anchors_ok > 0 || v.first_bad.as_ref().is_some_and(|b| b.anchor) {
        rows.push(("anchors held", v.anchors_ok.to_string()));
    }
    let mut out = fields(&rows);
    match &v.first_bad {
        None => out.push_str("intact\n"),
        Some(p) => out.push_str(&format!(
            "FIRST BAD RECORD: {}: {}\n",
            p.seq,
            cell(&p.problem)
        )),
    }
    out
}

/// `keyward --json audit anchor`: the head's fields (hex for bytes) and
/// its one-line text form under `anchor`, which `audit verify --anchor`
/// reads from such a document too.
pub fn anchor_json(a: &keyward_protocol::admin::AuditAnchor) -> serde_json::Value {
    serde_json::json!({
        "seq": a.seq,
        "head": hex::encode(a.head),
        "created_at": a.created_at,
        "signature": hex::encode(&a.signature),
        "anchor": a.to_line(),
    })
}

/// The audit table's columns.
/// The audit table's columns. By default the reason, last, gets what is
/// left of the line.
const AUDIT_COLUMNS: [Col; 9] = [
    ("SEQ", Fit::Keep),
    ("TIME", Fit::Keep),
    ("KIND", Fit::Wide),
    ("ACTOR", Fit::Cut(22)),
    ("KEY", Fit::Cut(18)),
    ("OPERATION", Fit::Cut(16)),
    ("MECHANISM", Fit::Wide),
    ("RESULT", Fit::Keep),
    ("REASON", Fit::Fill),
];

/// Audit records as a table (`audit tail`, `audit query`); oldest first.
pub fn records(records: &[AuditRecordInfo]) -> String {
    if records.is_empty() {
        return "no audit records\n".to_owned();
    }
    let rows: Vec<Vec<String>> = records.iter().map(record_row).collect();
    table(&AUDIT_COLUMNS, &rows)
}

/// The audit table printed a batch at a time (`audit tail --follow`): the
/// header once, then rows; columns only ever widen, so a later batch
/// stays aligned with what was printed before unless a cell is wider, or
/// (by default) unless the line would pass [`WIDTH`]: then, as in
/// [`table`], the reason and the widest columns give.
#[derive(Debug, Default)]
pub struct RecordTable {
    widths: Vec<usize>,
    header_printed: bool,
}

impl RecordTable {
    /// The text for the next batch: the header first (even for an empty
    /// first batch), then one line per record.
    pub fn push(&mut self, records: &[AuditRecordInfo]) -> String {
        let wide = style::wide();
        let visible: Vec<usize> = (0..AUDIT_COLUMNS.len())
            .filter(|&i| wide || AUDIT_COLUMNS[i].1 != Fit::Wide)
            .collect();
        let pick = |row: Vec<String>| -> Vec<String> {
            visible
                .iter()
                .map(|&i| {
                    let c = row.get(i).map_or("", String::as_str);
                    match AUDIT_COLUMNS[i].1 {
                        Fit::Cut(max) if !wide => shortened(c, max),
                        Fit::Fill if !wide => shortened(c, WIDTH),
                        _ => c.to_owned(),
                    }
                })
                .collect()
        };
        let header = pick(AUDIT_COLUMNS.iter().map(|c| c.0.to_owned()).collect());
        let mut rows: Vec<Vec<String>> = records.iter().map(record_row).map(pick).collect();
        widen(&mut self.widths, &header);
        for row in &rows {
            widen(&mut self.widths, row);
        }
        if !wide {
            let fits: Vec<Fit> = visible.iter().map(|&i| AUDIT_COLUMNS[i].1).collect();
            narrow(&fits, &header, &mut self.widths, WIDTH);
            cut_to(&mut rows, &self.widths);
        }
        let mut out = String::new();
        if !self.header_printed {
            self.header_printed = true;
            out.push_str(&table_line(&header, &self.widths));
        }
        for row in &rows {
            out.push_str(&table_line(row, &self.widths));
        }
        out
    }
}

fn record_row(r: &AuditRecordInfo) -> Vec<String> {
    vec![
        r.seq.to_string(),
        format_time(r.at),
        cell(&r.kind),
        actor(r),
        match (&r.key, r.key_version) {
            (None, _) => "-".to_owned(),
            (Some(k), None) => cell(k),
            (Some(k), Some(v)) => format!("{} v{v}", cell(k)),
        },
        if r.count > 1 {
            format!(
                "{} x{} in {} ms",
                cell(&r.operation),
                r.count,
                r.span_us / 1000
            )
        } else {
            cell(&r.operation)
        },
        r.mechanism.map_or_else(
            || "-".to_owned(),
            |m| {
                keyward_policy::mechanism_name(m)
                    .map_or_else(|| format!("{m:#010x}"), str::to_owned)
            },
        ),
        result(r.result),
        cell(&r.reason),
    ]
}

/// Who acted: the application's name, `administrator uid:N`, `agent`,
/// `scheduler`; in a fleet's shared trail, `@` the agent's host.
fn actor(r: &AuditRecordInfo) -> String {
    let who = actor_here(r);
    match &r.host {
        Some(host) => format!("{who}@{}", cell(host)),
        None => who,
    }
}

/// [`actor`] without the host.
fn actor_here(r: &AuditRecordInfo) -> String {
    let uid = r.uid.map(|u| format!(" uid:{u}")).unwrap_or_default();
    match (r.actor.as_str(), &r.application) {
        ("application", Some(name)) => cell(name),
        ("application" | "administrator", None) | ("administrator", Some(_)) => {
            format!("{}{uid}", r.actor)
        }
        (other, _) => cell(other),
    }
}

/// `ok`, the `CKR_*` name, or the value in hex.
fn result(rv: u64) -> String {
    match rv {
        0 => "ok".to_owned(),
        rv => keyward_policy::rv_name(rv).map_or_else(|| format!("{rv:#010x}"), str::to_owned),
    }
}

/// A duration in seconds for people: `1h`, `7d`, `1m30s`.
fn span(secs: u64) -> String {
    keyward_policy::format_duration(std::time::Duration::from_secs(secs))
}

fn anomaly_name(kind: AnomalyKind) -> &'static str {
    match kind {
        AnomalyKind::NewApplication => "new application",
        AnomalyKind::UnusualHour => "unusual hour",
        AnomalyKind::VolumeSpike => "volume spike",
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

/// `keyward report` as text: the periods, a table of the keys, each key's
/// details, then rotation compliance, failed admin actions, unmanaged
/// objects and every anomaly.
pub fn report(r: &Report) -> String {
    wrap_long(report_text(r))
}

fn report_text(r: &Report) -> String {
    let mut out = format!(
        "report at {}: window {} (from {}), baseline {} before it\n",
        format_time(r.generated_at),
        span(r.window_secs),
        format_time(r.generated_at - i64::try_from(r.window_secs).unwrap_or(0)),
        span(r.baseline_secs)
    );
    out.push('\n');
    if r.keys.is_empty() {
        out.push_str("no managed keys\n");
    } else {
        let rows: Vec<Vec<String>> = r.keys.iter().map(key_summary).collect();
        out.push_str(&table(
            &[
                ("TOKEN", Fit::Wide),
                ("KEY", Fit::Cut(40)),
                ("CLASS", Fit::Wide),
                ("STATE", Fit::Keep),
                ("VERSION", Fit::Wide),
                ("AGE", Fit::Wide),
                ("ROTATE EVERY", Fit::Wide),
                ("CRYPTOPERIOD", Fit::Wide),
                ("NEXT ROTATION", Fit::Keep),
                ("OVERDUE", Fit::Keep),
                ("CERT EXPIRES", Fit::Wide),
                ("USES WINDOW", Fit::Keep),
                ("USES TOTAL", Fit::Wide),
                ("ANOMALIES", Fit::Keep),
                ("DRIFT", Fit::Wide),
                ("BACKUP", Fit::Keep),
            ],
            &rows,
        ));
        for k in &r.keys {
            out.push('\n');
            out.push_str(&key_details(k));
        }
    }
    out.push('\n');
    let c = &r.rotation;
    out.push_str(&match c.active {
        0 => "rotation compliance: no active keys\n".to_owned(),
        n => format!(
            "rotation compliance: {}% ({} of {} not overdue){}\n",
            u64::from(c.compliant) * 100 / u64::from(n),
            c.compliant,
            plural(n, "active key"),
            if c.overdue.is_empty() {
                String::new()
            } else {
                format!("; overdue: {}", cell(&c.overdue.join(", ")))
            }
        ),
    });
    out.push_str(&backups(&r.keys));
    out.push_str(&failed_admin(&r.failed_admin));
    if r.pending_requests.is_empty() {
        out.push_str("approval requests waiting: none\n");
    } else {
        out.push_str(&format!(
            "approval requests waiting: {}\n",
            r.pending_requests.len()
        ));
        out.push_str(&indent(&request_table(&r.pending_requests, 2)));
    }
    out.push_str(&unmanaged(&r.unmanaged));
    if r.anomalies.is_empty() {
        out.push_str("anomalies: none\n");
    } else {
        out.push_str(&format!("anomalies: {}\n", r.anomalies.len()));
        let rows: Vec<Vec<String>> = r
            .anomalies
            .iter()
            .map(|a| {
                vec![
                    format!("{}/{}", cell(&a.token), cell(&a.key)),
                    anomaly_name(a.kind).to_owned(),
                    cell(&a.detail),
                ]
            })
            .collect();
        out.push_str(&indent(&table_at(
            &[
                ("KEY", Fit::Cut(32)),
                ("ANOMALY", Fit::Keep),
                ("WHAT", Fit::Fill),
            ],
            &rows,
            2,
        )));
    }
    out.push_str(&policy_findings(&r.keys));
    out
}

/// `text` in lines of at most 100 columns, broken at spaces: the first
/// indented by `first`, the rest by `rest` spaces (a word longer than a
/// line stays whole).
fn wrapped(text: &str, first: usize, rest: usize) -> String {
    const WIDTH: usize = 100;
    let mut out = String::new();
    let mut line = " ".repeat(first);
    let mut empty = true;
    for word in text.split(' ') {
        if !empty && line.len() + 1 + word.len() > WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = " ".repeat(rest);
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// `n` and `word`, plural unless `n` is 1.
fn counted(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// The report's keys the policy in force would refuse (or warns about),
/// each key on a line and its findings under it.
fn policy_findings(keys: &[KeyReport]) -> String {
    use keyward_protocol::admin::FindingSeverity;
    let all = || keys.iter().flat_map(|k| &k.policy_findings);
    let refused = all()
        .filter(|f| f.severity == FindingSeverity::Refused)
        .count();
    let warned = all().count() - refused;
    if refused + warned == 0 {
        return "keys against the policy: nothing the policy would refuse\n".to_owned();
    }
    let keys_refused = keys
        .iter()
        .filter(|k| {
            k.policy_findings
                .iter()
                .any(|f| f.severity == FindingSeverity::Refused)
        })
        .count();
    let mut out = format!(
        "keys against the policy: {keys_refused} the policy would refuse ({}, {})\n",
        counted(refused, "refusal"),
        counted(warned, "warning")
    );
    for k in keys.iter().filter(|k| !k.policy_findings.is_empty()) {
        out.push_str(&format!("  {}/{}\n", cell(&k.token), cell(&k.name)));
        for f in &k.policy_findings {
            let severity = match f.severity {
                FindingSeverity::Refused => "refused",
                FindingSeverity::Warning => "warning",
            };
            out.push_str(&wrapped(&format!("{severity}: {}", cell(&f.detail)), 4, 6));
        }
    }
    out
}

/// The report's failed administrator actions: counts, and the last ones.
fn failed_admin(f: &keyward_protocol::admin::FailedAdmin) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "failed admin actions: {} in the window, {} with the baseline, {} in all\n",
        f.window, f.period, f.total
    ));
    if !f.last.is_empty() {
        let rows: Vec<Vec<String>> = f
            .last
            .iter()
            .map(|a| {
                vec![
                    a.seq.to_string(),
                    format_time(a.at),
                    a.uid.map_or_else(|| "-".to_owned(), |u| format!("uid:{u}")),
                    cell(&a.operation),
                    opt_cell(&a.key),
                    result(a.result),
                    cell(&a.reason),
                ]
            })
            .collect();
        out.push_str(&indent(&table_at(
            &[
                ("SEQ", Fit::Keep),
                ("TIME", Fit::Keep),
                ("BY", Fit::Keep),
                ("ACTION", Fit::Cut(16)),
                ("KEY", Fit::Cut(24)),
                ("RESULT", Fit::Keep),
                ("WHY", Fit::Fill),
            ],
            &rows,
            2,
        )));
    }
    out
}

/// The report's uses of objects the inventory does not manage.
fn unmanaged(unmanaged: &[keyward_protocol::admin::UnmanagedUsage]) -> String {
    let mut out = String::new();
    if unmanaged.is_empty() {
        out.push_str("unmanaged objects: no uses\n");
    } else {
        out.push_str("unmanaged objects:\n");
        let rows: Vec<Vec<String>> = unmanaged
            .iter()
            .map(|u| {
                vec![
                    cell(&u.token),
                    cell(&u.object),
                    cell(&u.application),
                    u.window.to_string(),
                    u.total.to_string(),
                ]
            })
            .collect();
        out.push_str(&indent(&table_at(
            &[
                ("TOKEN", Fit::Cut(16)),
                ("OBJECT", Fit::Cut(32)),
                ("APPLICATION", Fit::Cut(24)),
                ("USES WINDOW", Fit::Keep),
                ("USES TOTAL", Fit::Keep),
            ],
            &rows,
            2,
        )));
    }
    out
}

/// One revocation of a key in the report: when, its latency, and whether
/// any use followed it.
fn revocation_line(v: &keyward_protocol::admin::Revocation) -> String {
    format!(
        "  {} at {} (record {}): latency {}; versions {}; no use after it: {}{}\n",
        cell(&v.action),
        format_time(v.effective_at),
        v.seq,
        v.latency_us.map_or_else(
            || "unknown (no request in the trail)".to_owned(),
            |us| format!("{:.1} ms", us as f64 / 1000.0)
        ),
        if v.versions.is_empty() {
            "all".to_owned()
        } else {
            v.versions
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        },
        yes_no(v.no_use_after),
        match v.first_use_after {
            Some(seq) if !v.no_use_after => {
                format!(
                    " ({}, the first at record {seq})",
                    plural(v.uses_after, "use")
                )
            }
            _ => String::new(),
        }
    )
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

fn key_summary(k: &KeyReport) -> Vec<String> {
    vec![
        cell(&k.token),
        cell(&k.name),
        cell(&k.class),
        cell(k.state.as_str()),
        k.active_version
            .map_or_else(|| "-".to_owned(), |v| v.to_string()),
        k.age_secs.map_or_else(|| "-".to_owned(), span),
        k.rotation_interval_secs
            .map_or_else(|| "-".to_owned(), span),
        k.cryptoperiod_secs.map_or_else(|| "-".to_owned(), span),
        format_opt(k.next_rotation),
        yes_no(k.overdue),
        match &k.certificate {
            None => "none".to_owned(),
            Some(c) => match c.not_after {
                None => "unreadable".to_owned(),
                Some(t) if c.expiring => format!("{} EXPIRING", format_time(t)),
                Some(t) => format_time(t),
            },
        },
        k.usage.window.to_string(),
        k.usage.total.to_string(),
        if k.learning && k.anomalies.is_empty() {
            "learning".to_owned()
        } else {
            k.anomalies.len().to_string()
        },
        k.drift.len().to_string(),
        backup_cell(k),
    ]
}

/// A key's backups in `keyward report`'s details: the last backup, the
/// last drill, and the backups still holding a destroyed key.
fn backup_pairs(k: &KeyReport) -> Vec<(&'static str, String)> {
    let mut pairs = Vec::new();
    pairs.push((
        "last backup",
        format!(
            "{}{}",
            k.last_backup
                .as_ref()
                .map_or_else(|| "none".to_owned(), backup_mark),
            if k.backup_missing {
                " (its current version is in no backup)"
            } else {
                ""
            }
        ),
    ));
    pairs.push((
        "last drill",
        k.last_drill.as_ref().map_or_else(
            || "none".to_owned(),
            |d| {
                format!(
                    "{}: {}",
                    backup_mark(&BackupMark {
                        at: d.at,
                        id: d.id.clone()
                    }),
                    if d.ok { "ok" } else { "FAILED" }
                )
            },
        ),
    ));
    if !k.held_by_backups.is_empty() {
        pairs.push((
            "held by backups",
            k.held_by_backups
                .iter()
                .map(backup_mark)
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    pairs
}

/// One key's usage, anomalies, exports, drift and revocations.
fn key_details(k: &KeyReport) -> String {
    let mut out = format!("key {}/{}\n", cell(&k.token), cell(&k.name));
    let u = &k.usage;
    let mut pairs = vec![(
        "uses",
        format!(
            "{} in the window, {} in the baseline, {} in all ({} failed)",
            u.window, u.baseline, u.total, u.failed
        ),
    )];
    if let Some(c) = &k.certificate {
        pairs.push((
            "certificate",
            match (c.not_after, &c.problem) {
                (Some(t), _) if c.expiring => {
                    format!(
                        "expires {} (EXPIRING: within the class's warning)",
                        format_time(t)
                    )
                }
                (Some(t), _) => format!("expires {}", format_time(t)),
                (None, p) => format!("unreadable: {}", opt_cell(p)),
            },
        ));
    }
    let e = &k.exports;
    pairs.push((
        "export attempts",
        if e.refused.is_empty() {
            "none refused".to_owned()
        } else {
            format!(
                "refused {} ({} in the window)",
                e.refused
                    .iter()
                    .map(|o| format!("{} ×{}", cell(&o.operation), o.count))
                    .collect::<Vec<_>>()
                    .join(", "),
                e.refused_window
            )
        },
    ));
    pairs.push((
        "wraps made",
        format!("{} ({} in the window)", e.wraps, e.wraps_window),
    ));
    pairs.push((
        "anomalies",
        match (k.anomalies.len(), k.learning) {
            (0, true) => "none (learning: no use in the baseline yet)".to_owned(),
            (0, false) => "none".to_owned(),
            (n, _) => n.to_string(),
        },
    ));
    if k.drift.is_empty() {
        pairs.push(("drift", "none".to_owned()));
    }
    pairs.extend(backup_pairs(k));
    if let Some(h) = &k.hsm_error {
        pairs.push(("HSM", format!("not asked: {}", cell(h))));
    }
    out.push_str(&indent(&fields(&pairs)));
    if !u.by_application.is_empty() {
        let rows: Vec<Vec<String>> = u
            .by_application
            .iter()
            .map(|a| {
                vec![
                    cell(&a.application),
                    cell(&a.exe),
                    a.window.to_string(),
                    a.baseline.to_string(),
                    a.total.to_string(),
                    format_time(a.last_at),
                ]
            })
            .collect();
        out.push_str(&indent(&table_at(
            &[
                ("APPLICATION", Fit::Cut(24)),
                ("EXECUTABLE", Fit::Cut(32)),
                ("WINDOW", Fit::Keep),
                ("BASELINE", Fit::Keep),
                ("TOTAL", Fit::Keep),
                ("LAST USE", Fit::Keep),
            ],
            &rows,
            2,
        )));
    }
    for a in &k.anomalies {
        out.push_str(&format!(
            "  anomaly: {}: {}\n",
            anomaly_name(a.kind),
            cell(&a.detail)
        ));
    }
    for d in &k.drift {
        out.push_str(&format!("  drift: {}\n", cell(d)));
    }
    for v in &k.revocations {
        out.push_str(&revocation_line(v));
    }
    out
}

/// A key answer as one JSON document ([`json`]), unwrapped by
/// [`crate::json::key_view`]: each approval request in it also carries its
/// `digest` (hex), computed from its fields.
pub fn key_json(resp: &KeyResponse) -> String {
    json(&crate::json::key_view(resp))
}

/// One JSON object per line (JSON lines) for `--json` on the audit
/// record commands: what a SIEM ingests.
pub fn json_lines<T: Serialize>(items: &[T]) -> String {
    items.iter().map(json_line).collect()
}

/// `value` as compact JSON on one line ([`crate::json::view`]), with a
/// final newline.
pub fn json_line<T: Serialize>(value: &T) -> String {
    let mut text = crate::json::view(value).to_string();
    text.push('\n');
    text
}

/// One pretty JSON document (with a final newline): `value` by the rules
/// of [`crate::json`] (no variant wrapping, RFC 3339 times, names for
/// mechanisms and return values, hex `backend_id`s).
pub fn json<T: Serialize>(value: &T) -> String {
    let v = crate::json::view(value);
    let mut text = serde_json::to_string_pretty(&v).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_protocol::admin::{AuditProblem, HistoryEntry, TokenStatus, VersionInfo};

    const T0: i64 = 1_769_882_400; // 2026-01-31 18:00:00Z

    fn grant() -> GrantInfo {
        GrantInfo {
            key: "web-tls".into(),
            application: "nginx".into(),
            operations: vec![
                keyward_policy::Operation::Sign,
                keyward_policy::Operation::Verify,
            ],
            expires_at: Some(T0 + 8 * 3600),
            source: "key".into(),
        }
    }

    fn key_info() -> KeyInfo {
        KeyInfo {
            name: "web-tls".into(),
            token: "keyward".into(),
            owner: "alice".into(),
            purpose: "signing".parse().unwrap(),
            class: "tls".into(),
            algorithm: "ec:p256".parse().unwrap(),
            state: "active".parse().unwrap(),
            created_at: T0,
            activated_at: Some(T0 + 60),
            rotated_at: None,
            deactivated_at: None,
            protect_until: Some(T0 + 90 * 86_400),
            process_until: Some(T0 + 180 * 86_400),
            next_rotation: None,
            scope: vec!["pci".into()],
            last_used_at: None,
            backup_allowed: false,
            versions: vec![
                VersionInfo {
                    version: 1,
                    backend_id: vec![0x01, 0xab],
                    state: "deactivated".parse().unwrap(),
                    created_at: T0,
                    deactivated_at: Some(T0 + 3600),
                    destroyed_at: None,
                },
                VersionInfo {
                    version: 2,
                    backend_id: vec![0x02, 0xcd],
                    state: "active".parse().unwrap(),
                    created_at: T0 + 3600,
                    deactivated_at: None,
                    destroyed_at: None,
                },
            ],
            grants: vec![grant()],
            history: vec![
                HistoryEntry {
                    at: T0,
                    version: None,
                    from: None,
                    to: "pre-activation".parse().unwrap(),
                    actor: "alice".into(),
                    reason: "".into(),
                },
                HistoryEntry {
                    at: T0 + 60,
                    version: Some(1),
                    from: Some("pre-activation".parse().unwrap()),
                    to: "active".parse().unwrap(),
                    actor: "alice".into(),
                    reason: "go live".into(),
                },
            ],
            recovery_until: None,
            held_by_backups: Vec::new(),
            certificates: Vec::new(),
            reason_code: None,
        }
    }

    fn approval() -> ApprovalRequest {
        ApprovalRequest {
            id: "req-7f3a".into(),
            action: "destroy".into(),
            target: "keyward/web-tls".into(),
            requester: "alice".into(),
            created_at: T0,
            expires_at: T0 + 86_400,
            status: "pending".parse().unwrap(),
            reason: "retired".into(),
            parameters: "{}".into(),
            needed: 2,
            decisions: Vec::new(),
            outcome: String::new(),
        }
    }

    /// `f`'s text with `--wide`.
    fn wide<T>(f: impl FnOnce() -> T) -> T {
        style::with(
            style::Style {
                wide: true,
                zone: None,
            },
            f,
        )
    }

    /// Every line of `text` fits [`WIDTH`] characters.
    #[track_caller]
    fn fits(text: &str) {
        for line in text.lines() {
            assert!(
                line.chars().count() <= WIDTH,
                "{} characters:\n{line}\nin\n{text}",
                line.chars().count()
            );
        }
    }

    fn contains_all(text: &str, wants: &[&str]) {
        for want in wants {
            assert!(text.contains(want), "{want:?} missing in\n{text}");
        }
    }

    #[test]
    fn tables_align_and_have_no_trailing_blanks() {
        let t = table(
            &[
                ("A", Fit::Keep),
                ("LONG HEADER", Fit::Cut(20)),
                ("C", Fit::Keep),
            ],
            &[
                vec!["wide value".into(), "x".into(), "-".into()],
                vec!["é".into(), "yy".into(), "last".into()],
            ],
        );
        assert_eq!(
            t,
            "A           LONG HEADER  C\n\
             wide value  x            -\n\
             é           yy           last\n"
        );
    }

    /// A key with every value at a realistic longest: a 64-character
    /// name, long tokens, classes, ids, subjects, reasons.
    fn long_key() -> KeyInfo {
        let mut k = key_info();
        k.name = format!("payments-{}", "n".repeat(55));
        k.token = "production-hsm-token-eu-west-1a".into();
        k.class = "tls-server-certificates-long-class".into();
        k.owner = "team-payments-platform-on-call".into();
        k.algorithm = "rsa:4096".parse().unwrap();
        k.state = "pre-activation".parse().unwrap();
        k.protect_until = Some(T0 + 86_400);
        for v in &mut k.versions {
            v.backend_id = vec![0xab; 32];
            v.destroyed_at = Some(T0 + 7200);
        }
        let mut g = grant();
        g.key = k.name.clone();
        g.application = "payments-settlement-batch-worker-eu".into();
        g.operations = vec![
            keyward_policy::Operation::Sign,
            keyward_policy::Operation::Verify,
            keyward_policy::Operation::Encrypt,
            keyward_policy::Operation::Decrypt,
            keyward_policy::Operation::Wrap,
            keyward_policy::Operation::Unwrap,
            keyward_policy::Operation::Derive,
        ];
        g.source = "class".into();
        k.grants = vec![g];
        for h in &mut k.history {
            h.actor = "administrator uid:1000 (alice-the-operator)".into();
            h.reason = format!("{}approved", "change ticket CHG-2026-000123; ".repeat(6));
        }
        k.certificates = vec![keyward_protocol::admin::KeyCertificate {
            version: 2,
            subject:
                "CN=payments.internal.example.com,OU=Payments Platform,O=Example Corporation,C=DE"
                    .into(),
            not_before: T0,
            not_after: T0 + 365 * 86_400,
            sha256: "ab".repeat(32),
            imported_at: T0,
        }];
        k
    }

    #[test]
    fn every_table_fits_100_columns_and_wide_shows_all() {
        let k = long_key();
        let long_values = [
            k.name.as_str(),
            k.class.as_str(),
            k.owner.as_str(),
            k.grants[0].application.as_str(),
            k.history[1].reason.as_str(),
        ];
        // key show and key list.
        let shown = KeyResponse::Key(Box::new(k.clone()));
        let text = key_response(&shown);
        fits(&text);
        let all = wide(|| key_response(&shown));
        contains_all(&all, &long_values);
        contains_all(
            &all,
            &[
                &"ab".repeat(32),
                &k.certificates[0].subject,
                "DESTROYED",
                "NOT BEFORE",
            ],
        );
        let list = KeyResponse::Keys(vec![k.clone(), key_info()]);
        fits(&key_response(&list));
        contains_all(
            &wide(|| key_response(&list)),
            &[&k.name, &k.token, &k.class, &k.owner, "PROTECT UNTIL"],
        );
        // grant list, app list, shadows.
        let grants = KeyResponse::Grants(vec![k.grants[0].clone(), grant()]);
        let text = key_response(&grants);
        fits(&text);
        // Operations shortened, not lost without a sign.
        assert!(text.contains("sign,verify,encrypt"), "{text}");
        contains_all(
            &wide(|| key_response(&grants)),
            &[
                "sign,verify,encrypt,decrypt,wrap,unwrap,derive",
                &k.grants[0].application,
            ],
        );
        let apps = KeyResponse::Apps(vec![AppInfo {
            name: "payments-settlement-batch-worker-eu".into(),
            uid: Some(4_294_967_294),
            gid: Some(4_294_967_294),
            exe: Some(format!(
                "/opt/payments/{}/bin/settlement-worker",
                "v".repeat(40)
            )),
            keys: (0..12).map(|i| format!("payments-key-{i:02}")).collect(),
        }]);
        fits(&key_response(&apps));
        contains_all(
            &wide(|| key_response(&apps)),
            &["payments-key-11", "/bin/settlement-worker"],
        );
        let shadows = KeyResponse::Shadows(vec![ShadowInfo {
            token: k.token.clone(),
            backend_id: vec![0xcd; 32],
            label: "l".repeat(64),
            class: "CKO_PRIVATE_KEY".into(),
            key_type: "CKK_EC_MONTGOMERY".into(),
            finding: "plant: CKA_ID of key payments version 2, on another token".into(),
        }]);
        fits(&key_response(&shadows));
        contains_all(
            &wide(|| key_response(&shadows)),
            &[&"cd".repeat(32), &"l".repeat(64)],
        );
        // The report, with long names everywhere.
        let mut r = report_fixture();
        for rk in &mut r.keys {
            rk.name = k.name.clone();
            rk.token = k.token.clone();
            rk.class = k.class.clone();
            rk.state = "pre-activation".parse().unwrap();
            rk.usage.window = 1_234_567;
            rk.certificate = Some(keyward_protocol::admin::CertificateInfo {
                not_after: Some(T0),
                problem: None,
                expiring: true,
            });
            for a in &mut rk.usage.by_application {
                a.application = "payments-settlement-batch-worker-eu".into();
                a.exe = format!("/opt/payments/{}/bin/worker", "v".repeat(40));
            }
        }
        r.failed_admin.last[0].key = Some(k.name.clone());
        r.failed_admin.last[0].operation = "request.execute".into();
        r.failed_admin.last[0].result = keyward_policy::KEYWARD_CONFLICT;
        r.failed_admin.last[0].reason = format!("{}taken", "conflict: ".repeat(20));
        r.unmanaged[0].object = format!("label:{}", "o".repeat(64));
        r.unmanaged[0].application = "payments-settlement-batch-worker-eu".into();
        r.anomalies[0].key = k.name.clone();
        r.anomalies[0].detail = "application \"x\" used the key ".repeat(5);
        let text = report(&r);
        fits(&text);
        assert!(text.contains("KEYWARD_CONFLICT"), "{text}");
        let all = wide(|| report(&r));
        contains_all(
            &all,
            &[
                &k.name,
                &k.class,
                "CRYPTOPERIOD",
                "EXPIRING",
                &r.failed_admin.last[0].reason,
            ],
        );
        // --local: longer times, still 100 columns.
        let local = style::with(
            style::Style {
                wide: false,
                zone: Some(jiff::tz::TimeZone::fixed(jiff::tz::offset(5))),
            },
            || (report(&r), key_response(&shown), key_response(&list)),
        );
        for t in [&local.0, &local.1, &local.2] {
            fits(t);
            assert!(t.contains("+05:00"), "{t}");
        }
        // The audit table.
        let mut long = record(12);
        long.application = Some("payments-settlement-batch-worker-eu".into());
        long.key = Some(k.name.clone());
        long.operation = "C_SignEncryptUpdate".into();
        long.result = 0x68;
        long.reason = format!(
            "{}no",
            "no grant of decrypt to this application on this key ".repeat(3)
        );
        let mut rs = records_fixture();
        rs.push(long.clone());
        fits(&records(&rs));
        contains_all(&wide(|| records(&rs)), &[&k.name, long.reason.as_str()]);
        // Backups: status, drill, contents.
        let contents = BackupContents {
            id: "f".repeat(64),
            token: k.token.clone(),
            created_at: T0,
            key_check: "e".repeat(64),
            keys: vec![keyward_protocol::admin::BackedUpKey {
                name: k.name.clone(),
                state: "active".parse().unwrap(),
                versions: (1..=30).collect(),
            }],
            absent: vec![],
        };
        let drill = BackupAnswer::Drill {
            contents: contents.clone(),
            results: vec![keyward_protocol::admin::DrillResult {
                name: k.name.clone(),
                version: 30,
                ok: false,
                detail: "the unwrapped key does not match its public key: ".repeat(3),
            }],
        };
        fits(&backup(&drill));
        contains_all(
            &wide(|| backup(&drill)),
            &["1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20"],
        );
        let status = BackupAnswer::Status(keyward_protocol::admin::BackupStatus {
            token: k.token.clone(),
            key_check: Some("e".repeat(64)),
            present: true,
            threshold: 2,
            custodians: vec![
                (
                    "carol.custodian@payments.example.com".into(),
                    1,
                    "d".repeat(64),
                ),
                ("dave".into(), 2, "c".repeat(64)),
            ],
            created_at: Some(T0),
            submitted: 0,
        });
        let text = backup(&status);
        fits(&text);
        // A share's digest is whole: custodians compare it.
        assert!(text.contains(&"d".repeat(64)), "{text}");
        assert!(text.contains("2 of 2 custodians"), "{text}");
        assert!(wide(|| backup(&status)).contains("carol.custodian@payments.example.com"));
    }

    #[test]
    fn cells_escape_control_characters() {
        assert_eq!(cell(""), "-");
        assert_eq!(cell("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\n");
        assert_eq!(hex(&[]), "-");
        assert_eq!(hex(&[0, 0x0f, 0xff]), "000fff");
    }

    #[test]
    fn a_changed_key_is_shown_in_brief() {
        let mut k = key_info();
        k.reason_code = Some(keyward_domain::ReasonCode::KeyCompromise);
        let text = key_changed(&k);
        assert!(text.starts_with("web-tls on token "), "{text}");
        assert!(
            text.contains("  protect until:  2026-05-01 18:00:00Z\n"),
            "{text}"
        );
        assert!(text.contains("  reason code:    keyCompromise\n"), "{text}");
        assert!(text.contains("CKA_ID "), "{text}");
        assert!(text.ends_with("(keyward key show web-tls prints everything about it)\n"));
        // Versions that are gone are not listed; the rest are, newest first.
        let live = k
            .versions
            .iter()
            .filter(|v| v.destroyed_at.is_none())
            .count();
        assert_eq!(text.matches("  version ").count(), live, "{text}");
        assert!(!text.contains("history"), "{text}");
        assert!(text.lines().all(|l| l.chars().count() <= 100), "{text}");
    }

    #[test]
    fn key_show_text() {
        let text = key_response(&KeyResponse::Key(Box::new(key_info())));
        contains_all(
            &text,
            &[
                "name:           web-tls",
                "state:          active",
                "scope:          pci",
                "backup:         not allowed",
                "created:        2026-01-31 18:00:00Z",
                "activated:      2026-01-31 18:01:00Z",
                "rotated:        -",
                "protect until:  2026-05-01 18:00:00Z",
                "last used:      - (updated every 5 s)\n",
                "versions:\n  VERSION  CKA_ID  STATE        DEACTIVATED\n",
                "  1        01ab    deactivated  2026-01-31 19:00:00Z\n",
                "  2        02cd    active       -\n",
                "grants:\n  APPLICATION  OPERATIONS   EXPIRES               SOURCE\n  nginx        sign,verify  2026-02-01 02:00:00Z  key\n",
                "history:\n  AT                    VERSION  FROM            TO              ACTOR  REASON\n",
                "  2026-01-31 18:00:00Z  -        -               pre-activation  alice  -\n",
                "  2026-01-31 18:01:00Z  1        pre-activation  active          alice  go live\n",
            ],
        );
        contains_all(
            &wide(|| key_response(&KeyResponse::Key(Box::new(key_info())))),
            &[
                "versions:\n  VERSION  CKA_ID  STATE        CREATED               DEACTIVATED           DESTROYED\n",
                "  1        01ab    deactivated  2026-01-31 18:00:00Z  2026-01-31 19:00:00Z  -\n",
            ],
        );
        // A CKA_ID of 16 bytes is shown whole, and the table still fits.
        let mut long_id = key_info();
        long_id.versions[0].backend_id = (0u8..16).collect();
        let text = key_response(&KeyResponse::Key(Box::new(long_id)));
        assert!(text.contains("000102030405060708090a0b0c0d0e0f"), "{text}");
        fits(&text);
        let mut bare = key_info();
        bare.versions.clear();
        bare.grants.clear();
        bare.history.clear();
        let text = key_response(&KeyResponse::Key(Box::new(bare)));
        contains_all(
            &text,
            &[
                "versions:\n  none\n",
                "grants:\n  none\n",
                "history:\n  none\n",
            ],
        );
        assert!(!text_of(&key_info()).contains("recovery"));
        assert!(!text_of(&key_info()).contains("reason code"));
        let mut revoked = key_info();
        revoked.state = keyward_policy::KeyState::Compromised;
        revoked.reason_code = Some(keyward_policy::ReasonCode::KeyCompromise);
        contains_all(
            &text_of(&revoked),
            &["state:          compromised
reason code:    keyCompromise (RFC 5280 code 1)
"],
        );
        let json = serde_json::to_value(&revoked).unwrap();
        assert_eq!(json["reason_code"], "keyCompromise");
        let mut recovering = key_info();
        recovering.state = keyward_policy::KeyState::Compromised;
        recovering.recovery_until = Some(T0 + 86_400);
        contains_all(
            &text_of(&recovering),
            &["recovery until:  2026-02-01 18:00:00Z (verify and decrypt only)\n"],
        );
    }

    const ID_A: &str = "aa11223344556677000000000000000000000000000000000000000000000001";
    const ID_B: &str = "bb11223344556677000000000000000000000000000000000000000000000002";

    #[test]
    fn key_show_names_the_backups_holding_a_destroyed_key() {
        assert!(!text_of(&key_info()).contains("held by backups"));
        let mut gone = key_info();
        gone.state = keyward_policy::KeyState::Destroyed;
        contains_all(
            &text_of(&gone),
            &["held by backups (retire them for the destruction to be final):\n  none\n"],
        );
        gone.held_by_backups = vec![
            BackupMark {
                at: T0,
                id: ID_A.into(),
            },
            BackupMark {
                at: T0 + 3600,
                id: ID_B.into(),
            },
        ];
        contains_all(
            &text_of(&gone),
            &[&format!(
                "held by backups (retire them for the destruction to be final):\n  \
                 {ID_A} made 2026-01-31 18:00:00Z\n  {ID_B} made 2026-01-31 19:00:00Z\n"
            )],
        );
        let v: Value = serde_json::from_str(&key_json(&KeyResponse::Key(Box::new(gone)))).unwrap();
        assert_eq!(v["held_by_backups"][1]["id"], ID_B);
        assert_eq!(v["held_by_backups"][1]["at"], "2026-01-31T19:00:00Z");
    }

    #[test]
    fn report_shows_backups_per_key_and_what_needs_one() {
        let mut r = report_fixture();
        let text = report(&r);
        contains_all(
            &text,
            &[
                "  ANOMALIES  BACKUP\n",
                "  last backup:      aa11223344556677 2026-01-31 18:00:00Z\n",
                "  last drill:       aa11223344556677 2026-01-31 18:01:00Z: ok\n",
                "  last backup:      none (its current version is in no backup)\n",
                "backups:\n  need a backup of their current version: prod/old\n",
            ],
        );
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("web-tls  ") || l.starts_with("old  "))
            .collect();
        assert!(rows[0].ends_with("  ok"), "{rows:?}");
        assert!(rows[1].ends_with("  MISSING"), "{rows:?}");
        assert!(!text.contains("held by backups"), "{text}");

        // Old destroyed while two backups hold it; web-tls's drill failed.
        let old = &mut r.keys[1];
        old.state = keyward_policy::KeyState::Destroyed;
        old.backup_missing = false;
        old.held_by_backups = vec![
            BackupMark {
                at: T0,
                id: ID_A.into(),
            },
            BackupMark {
                at: T0 + 3600,
                id: ID_B.into(),
            },
        ];
        if let Some(d) = r.keys[0].last_drill.as_mut() {
            d.ok = false;
        }
        let text = wide(|| report(&r));
        contains_all(
            &text,
            &[
                "  last drill:       aa11223344556677 2026-01-31 18:01:00Z: FAILED\n",
                "  held by backups:  aa11223344556677 2026-01-31 18:00:00Z, bb11223344556677 2026-01-31 19:00:00Z\n",
                "backups:\n  failed their last drill: prod/web-tls\n",
                &format!(
                    "  destroyed prod/old still held by backups (retire them): \
                     {ID_A} (2026-01-31 18:00:00Z), {ID_B} (2026-01-31 19:00:00Z)\n"
                ),
            ],
        );
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("prod ")).collect();
        assert!(rows[1].ends_with("  held:2"), "{rows:?}");
        assert!(!text.contains("need a backup"), "{text}");
        // By default the long line is wrapped at 100 columns.
        let text = report(&r);
        fits(&text);
        contains_all(
            &text,
            &[&format!(
                "  destroyed prod/old still held by backups (retire them):\n      \
                 {ID_A} (2026-01-31 18:00:00Z),\n      \
                 {ID_B} (2026-01-31 19:00:00Z)\n"
            )],
        );

        // Nothing to flag.
        r.keys.truncate(1);
        r.keys[0].last_drill = None;
        contains_all(
            &report(&r),
            &["backups: every key that wants one has one; no destroyed key is held\n"],
        );
        let v: Value = serde_json::from_str(&json(&r)).unwrap();
        assert_eq!(v["keys"][0]["last_backup"]["id"], ID_A);
        assert_eq!(v["keys"][0]["backup_missing"], false);
        assert_eq!(v["keys"][0]["last_drill"], Value::Null);
        assert_eq!(v["keys"][0]["held_by_backups"], serde_json::json!([]));
    }

    fn text_of(k: &KeyInfo) -> String {
        key_response(&KeyResponse::Key(Box::new(k.clone())))
    }

    #[test]
    fn key_list_text() {
        let mut other = key_info();
        other.name = "backup-wrap".into();
        other.state = keyward_policy::KeyState::PreActivation;
        other.versions.truncate(1);
        other.protect_until = None;
        let keys = KeyResponse::Keys(vec![key_info(), other]);
        assert_eq!(
            key_response(&keys),
            "NAME         TOKEN    STATE           CLASS  ALGORITHM  VERSION  CREATED\n\
             web-tls      keyward  active          tls    ec:p256    2        2026-01-31 18:00:00Z\n\
             backup-wrap  keyward  pre-activation  tls    ec:p256    1        2026-01-31 18:00:00Z\n"
        );
        assert_eq!(
            wide(|| key_response(&keys)),
            "NAME         TOKEN    STATE           CLASS  ALGORITHM  OWNER  VERSION  CREATED               PROTECT UNTIL\n\
             web-tls      keyward  active          tls    ec:p256    alice  2        2026-01-31 18:00:00Z  2026-05-01 18:00:00Z\n\
             backup-wrap  keyward  pre-activation  tls    ec:p256    alice  1        2026-01-31 18:00:00Z  -\n"
        );
        assert_eq!(key_response(&KeyResponse::Keys(vec![])), "no keys\n");
    }

    #[test]
    fn grants_apps_shadows_text() {
        let mut forever = grant();
        forever.application = "ssh-agent".into();
        forever.expires_at = None;
        assert_eq!(
            key_response(&KeyResponse::Grants(vec![grant(), forever])),
            "KEY      APPLICATION  OPERATIONS   EXPIRES               SOURCE\n\
             web-tls  nginx        sign,verify  2026-02-01 02:00:00Z  key\n\
             web-tls  ssh-agent    sign,verify  -                     key\n"
        );
        assert_eq!(key_response(&KeyResponse::Grants(vec![])), "no grants\n");

        let apps = vec![
            AppInfo {
                name: "nginx".into(),
                uid: Some(33),
                gid: None,
                exe: Some("/usr/sbin/nginx".into()),
                keys: vec!["web-tls".into(), "api".into()],
            },
            AppInfo {
                name: "any-root".into(),
                uid: Some(0),
                gid: Some(0),
                exe: None,
                keys: vec![],
            },
        ];
        assert_eq!(
            key_response(&KeyResponse::Apps(apps)),
            "NAME      UID  GID  EXE              KEYS\n\
             nginx     33   -    /usr/sbin/nginx  web-tls,api\n\
             any-root  0    0    -                -\n"
        );
        assert_eq!(
            key_response(&KeyResponse::Apps(vec![])),
            "no applications\n"
        );

        let shadows = vec![
            ShadowInfo {
                token: "keyward".into(),
                backend_id: vec![0xde, 0xad],
                label: "old\u{7}key".into(),
                class: "CKO_PRIVATE_KEY".into(),
                key_type: "CKK_EC".into(),
                finding: "unmanaged".into(),
            },
            ShadowInfo {
                token: "keyward".into(),
                backend_id: vec![],
                label: "".into(),
                class: "CKO_SECRET_KEY".into(),
                key_type: "CKK_AES".into(),
                finding: "plant: CKA_ID of key web v1".into(),
            },
        ];
        assert_eq!(
            key_response(&KeyResponse::Shadows(shadows)),
            "TOKEN    CKA_ID  LABEL        CLASS            KEY TYPE  FINDING\n\
             keyward  dead    old\\u{7}key  CKO_PRIVATE_KEY  CKK_EC    unmanaged\n\
             keyward  -       -            CKO_SECRET_KEY   CKK_AES   plant: CKA_ID of key web v1\n"
        );
        assert_eq!(
            key_response(&KeyResponse::Shadows(vec![])),
            "no shadow keys\n"
        );
    }

    #[test]
    fn pending_verified_done_text() {
        assert_eq!(
            key_response(&KeyResponse::Pending(approval())),
            format!(
                "request:     req-7f3a\n\
                 action:      destroy\n\
                 target:      keyward/web-tls\n\
                 parameters:  -\n\
                 requester:   alice\n\
                 status:      pending\n\
                 created:     2026-01-31 18:00:00Z\n\
                 expires:     2026-02-01 18:00:00Z\n\
                 reason:      retired\n\
                 needed:      2 (0 so far)\n\
                 decisions:   -\n\
                 outcome:     -\n\
                 digest:      {}\n",
                hex::encode(approval().content().digest())
            )
        );
        assert_eq!(
            key_response(&KeyResponse::Verified {
                key: "web-tls".into(),
                version: 2,
                detail: "ECDSA signature made and verified".into()
            }),
            "verified: web-tls version 2: ECDSA signature made and verified\n"
        );
        assert_eq!(
            key_response(&KeyResponse::Done("web-tls: active".into())),
            "web-tls: active\n"
        );
    }

    /// A request with parameters, decisions and an outcome.
    fn decided() -> ApprovalRequest {
        use keyward_domain::Decision;
        use keyward_protocol::admin::DecisionInfo;
        ApprovalRequest {
            action: "sign".into(),
            parameters:
                r#"{"data_sha256":"ab01","mechanism":"CKM_ECDSA","who":{"pid":7,"uid":1000}}"#
                    .into(),
            status: "executed".parse().unwrap(),
            decisions: vec![
                DecisionInfo {
                    administrator: "bob".into(),
                    decision: Decision::Approve,
                    at: T0 + 60,
                },
                DecisionInfo {
                    administrator: "carol".into(),
                    decision: Decision::Approve,
                    at: T0 + 120,
                },
            ],
            outcome: "signed once".into(),
            ..approval()
        }
    }

    #[test]
    fn a_request_shows_parameters_decisions_outcome_and_its_digest() {
        let r = decided();
        let text = pending(&r);
        contains_all(
            &text,
            &[
                "parameters:  {\"data_sha256\": \"ab01\", \"mechanism\": \"CKM_ECDSA\", \"who\": {\"pid\": 7, \"uid\": 1000}}\n",
                "status:      executed\n",
                "needed:      2 (2 so far)\n",
                "decision:    bob approve 2026-01-31 18:01:00Z\n",
                "decision:    carol approve 2026-01-31 18:02:00Z\n",
                "outcome:     signed once\n",
            ],
        );
        // The digest is the request's own, computed from its fields: a
        // change to any of them shows a different one.
        let digest = hex::encode(r.content().digest());
        assert!(
            text.ends_with(&format!("digest:      {digest}\n")),
            "{text}"
        );
        let other = ApprovalRequest {
            parameters: r#"{"data_sha256":"ab02"}"#.into(),
            ..r.clone()
        };
        assert!(!pending(&other).contains(&digest));
        // No roster: one approval by anyone carries it out.
        let open = ApprovalRequest {
            needed: 0,
            ..approval()
        };
        assert!(pending(&open).contains("needed:      1 (no roster"));
        // Not JSON: shown as given, escaped.
        let odd = ApprovalRequest {
            parameters: "a\nb".into(),
            ..approval()
        };
        assert!(pending(&odd).contains("parameters:  a\\nb\n"));

        let requests = KeyResponse::Requests(vec![approval(), decided()]);
        let list = key_response(&requests);
        let lines: Vec<&str> = list.lines().collect();
        contains_all(
            lines[0],
            &["REQUEST", "ACTION", "TARGET", "APPROVALS", "EXPIRES"],
        );
        assert!(!lines[0].contains("PARAMETERS"), "{list}");
        contains_all(lines[2], &["2/2", "executed"]);
        let list = wide(|| key_response(&requests));
        let lines: Vec<&str> = list.lines().collect();
        contains_all(
            lines[0],
            &["PARAMETERS", "APPROVALS", "DECISIONS", "OUTCOME"],
        );
        contains_all(lines[1], &["req-7f3a", "destroy", "0/2", "retired"]);
        contains_all(
            lines[2],
            &[
                "{\"data_sha256\": \"ab01\"",
                "2/2",
                "bob:approve,carol:approve",
                "signed once",
                "executed",
            ],
        );

        // JSON: the protocol's fields and the digest.
        let v: Value =
            serde_json::from_str(&key_json(&KeyResponse::Requests(vec![decided()]))).unwrap();
        let j = &v[0];
        assert_eq!(j["digest"], digest);
        assert_eq!(j["needed"], 2);
        assert_eq!(j["decisions"][1]["administrator"], "carol");
        assert_eq!(j["decisions"][1]["decision"], "approve");
        assert_eq!(j["outcome"], "signed once");
        assert_eq!(j["parameters"], r.parameters);
        let v: Value = serde_json::from_str(&key_json(&KeyResponse::Pending(approval()))).unwrap();
        assert_eq!(v["digest"], hex::encode(approval().content().digest()));
    }

    #[test]
    fn json_answers_are_unwrapped_with_rfc3339_times_and_hex_ids() {
        let k: Value =
            serde_json::from_str(&key_json(&KeyResponse::Key(Box::new(key_info())))).unwrap();
        assert_eq!(k["name"], "web-tls");
        assert_eq!(k["created_at"], "2026-01-31T18:00:00Z");
        assert_eq!(k["rotated_at"], Value::Null);
        assert_eq!(k["versions"][0]["backend_id"], "01ab");
        assert_eq!(k["versions"][1]["backend_id"], "02cd");
        assert_eq!(k["grants"][0]["operations"][1], "verify");
        assert_eq!(k["history"][1]["reason"], "go live");

        // key list: an array of keys, without their history.
        let v: Value =
            serde_json::from_str(&key_json(&KeyResponse::Keys(vec![key_info()]))).unwrap();
        assert_eq!(v[0]["versions"][0]["backend_id"], "01ab");
        assert_eq!(v[0]["name"], "web-tls");
        assert!(v[0].get("history").is_none(), "{v}");

        let shadow = ShadowInfo {
            token: "t".into(),
            backend_id: vec![],
            label: "l".into(),
            class: "CKO_SECRET_KEY".into(),
            key_type: "CKK_AES".into(),
            finding: "unmanaged".into(),
        };
        let v: Value =
            serde_json::from_str(&key_json(&KeyResponse::Shadows(vec![shadow]))).unwrap();
        assert_eq!(v[0]["backend_id"], "");

        let v: Value = serde_json::from_str(&key_json(&KeyResponse::Pending(approval()))).unwrap();
        assert_eq!(v["id"], "req-7f3a");
        assert_eq!(v["expires_at"], "2026-02-01T18:00:00Z");
        assert_eq!(v["status"], "pending");

        let v: Value =
            serde_json::from_str(&key_json(&KeyResponse::Grants(vec![grant()]))).unwrap();
        assert_eq!(v[0]["expires_at"], "2026-02-01T02:00:00Z");
        let v: Value = serde_json::from_str(&key_json(&KeyResponse::Apps(vec![]))).unwrap();
        assert_eq!(v, serde_json::json!([]));
        let v: Value = serde_json::from_str(&key_json(&KeyResponse::Verified {
            key: "k".into(),
            version: 3,
            detail: "d".into(),
        }))
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({ "key": "k", "version": 3, "detail": "d" })
        );
        let v: Value = serde_json::from_str(&key_json(&KeyResponse::Done("ok".into()))).unwrap();
        assert_eq!(v, serde_json::json!({ "done": "ok" }));
    }

    #[test]
    fn status_text_shows_every_field() {
        let s = Status {
            agent_version: "0.1.0".into(),
            app_protocol: keyward_protocol::VersionRange { min: 3, max: 4 },
            admin_protocol: keyward_protocol::VersionRange::only(3),
            pid: 42,
            uptime_secs: 3723,
            socket: "/run/keyward/keyward.sock".into(),
            connections: 3,
            socket_events: vec!["/run/keyward/keyward.sock was removed; bound again".into()],
            pending_requests: 2,
            policy: keyward_protocol::admin::PolicySummary {
                file: Some("/etc/keyward/policy.toml".into()),
                sha256: Some("ab".repeat(32)),
                mode: "strict".into(),
                applications: 4,
                classes: 6,
                administrators: 2,
            },
            keys_by_state: vec![
                (keyward_policy::KeyState::Active, 5),
                (keyward_policy::KeyState::Destroyed, 1),
            ],
            audit: keyward_protocol::admin::AuditHealth {
                records: 120,
                last_checkpoint_seq: Some(100),
                last_checkpoint_at: Some(1_796_400_000),
                unsealed: 20,
                write_failures: 0,
                failing: false,
            },
            scheduler_last_run: Some(1_796_400_000),
            scheduler_next_run: Some(1_796_400_060),
            store: keyward_protocol::admin::StoreHealth {
                kind: "sqlite".into(),
                location: "/var/lib/keyward/inventory.sqlite".into(),
                ..Default::default()
            },
            tokens: vec![TokenStatus {
                slot: 0,
                label: "keyward".into(),
                user_pin_initialized: true,
                allow_init_token: false,
                backend_library: "/usr/lib/softhsm/libsofthsm2.so".into(),
                backend_library_description: "Implementation of PKCS11".into(),
                backend_library_version: keyward_protocol::Version { major: 2, minor: 6 },
                backend_present: true,
                backend_label: "kw-backend".into(),
                backend_manufacturer: "SoftHSM project".into(),
                backend_model: "SoftHSM v2".into(),
                backend_serial: "abc".into(),
                backend_error: None,
            }],
        };
        contains_all(
            &status(&s),
            &[
                "0.1.0",
                "protocol:  application 3 to 4, admin 3",
                "pid:       42",
                "1h 2m 3s",
                "keyward.sock",
                "clients:   3 connections",
                "requests:  2 pending approval",
                "sockets:   /run/keyward/keyward.sock was removed; bound again",
                "slot 0: \"keyward\"",
                "user PIN set:      yes",
                "allow_init_token:  no",
                "Implementation of PKCS11 2.6",
                "\"kw-backend\" (SoftHSM project SoftHSM v2, serial abc)",
                "policy:    /etc/keyward/policy.toml (strict mode, sha256 abababababababab), 4 applications, 6 classes, 2 administrators",
                "keys:      5 active, 1 destroyed",
                "audit:     120 records, last checkpoint at record 100 (",
                "20 unsealed, 0 write failures",
                "scheduler: last run ",
            ],
        );
        let v: Value = serde_json::from_str(&json(&s)).unwrap();
        assert_eq!(v["tokens"][0]["backend_library_version"]["minor"], 6);
        assert_eq!(
            v["keys_by_state"],
            serde_json::json!({ "active": 5, "destroyed": 1 })
        );
        assert!(
            v["scheduler_last_run"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{v}"
        );
    }

    fn record(seq: u64) -> AuditRecordInfo {
        AuditRecordInfo {
            seq,
            at: T0,
            micros: 250_000,
            kind: "use".into(),
            actor: "application".into(),
            application: Some("nginx".into()),
            uid: Some(33),
            pid: Some(4242),
            exe: Some("/usr/sbin/nginx".into()),
            token: Some("keyward".into()),
            key: Some("web-tls".into()),
            key_version: Some(2),
            operation: "C_Sign".into(),
            mechanism: Some(0x1041), // CKM_ECDSA
            result: 0,
            reason: String::new(),
            count: 1,
            span_us: 0,
            host: None,
        }
    }

    /// One record of each actor, a refusal, an unknown mechanism and
    /// result, text that must not reach the terminal raw.
    fn records_fixture() -> Vec<AuditRecordInfo> {
        let mut denied = record(8);
        denied.kind = "refusal".into();
        denied.application = Some("evil\u{1b}[2J".into());
        denied.operation = "C_Decrypt".into();
        denied.mechanism = Some(0x8000_1234);
        denied.result = 0x68;
        denied.reason = "no grant\nfor decrypt".into();
        let mut admin = record(9);
        admin.kind = "lifecycle".into();
        admin.actor = "administrator".into();
        admin.application = None;
        admin.uid = Some(1000);
        admin.key_version = None;
        admin.operation = "rotate".into();
        admin.mechanism = None;
        admin.reason = "ticket 42".into();
        let mut agent = record(10);
        agent.at = T0 + 3600;
        agent.kind = "agent".into();
        agent.actor = "agent".into();
        agent.application = None;
        agent.uid = None;
        agent.key = None;
        agent.key_version = None;
        agent.operation = "start".into();
        agent.mechanism = None;
        agent.result = 0x8000_0001;
        let mut scheduler = record(11);
        scheduler.actor = "scheduler".into();
        scheduler.application = None;
        scheduler.kind = "lifecycle".into();
        scheduler.operation = "deactivate".into();
        scheduler.mechanism = None;
        vec![record(7), denied, admin, agent, scheduler]
    }

    #[test]
    fn audit_records_text() {
        // By default: 100 columns, the names of results whole.
        assert_eq!(
            records(&records_fixture()),
            "SEQ  TIME                  ACTOR       KEY         OPERATION  RESULT                          REASON\n\
             7    2026-01-31 18:00:00Z  nginx       web-tls v2  C_Sign     ok                              -\n\
             8    2026-01-31 18:00:00Z  evil\\u{1b…  web-tls v2  C_Decrypt  CKR_KEY_FUNCTION_NOT_PERMITTED  no gr…\n\
             9    2026-01-31 18:00:00Z  administr…  web-tls     rotate     ok                              ticke…\n\
             10   2026-01-31 19:00:00Z  agent       -           start      0x80000001                      -\n\
             11   2026-01-31 18:00:00Z  scheduler   web-tls v2  deactiva…  ok                              -\n"
        );
        assert_eq!(
            wide(|| records(&records_fixture())),
            "SEQ  TIME                  KIND       ACTOR                   KEY         OPERATION   MECHANISM   RESULT                          REASON\n\
             7    2026-01-31 18:00:00Z  use        nginx                   web-tls v2  C_Sign      CKM_ECDSA   ok                              -\n\
             8    2026-01-31 18:00:00Z  refusal    evil\\u{1b}[2J           web-tls v2  C_Decrypt   0x80001234  CKR_KEY_FUNCTION_NOT_PERMITTED  no grant\\nfor decrypt\n\
             9    2026-01-31 18:00:00Z  lifecycle  administrator uid:1000  web-tls     rotate      -           ok                              ticket 42\n\
             10   2026-01-31 19:00:00Z  agent      agent                   -           start       -           0x80000001                      -\n\
             11   2026-01-31 18:00:00Z  lifecycle  scheduler               web-tls v2  deactivate  -           ok                              -\n"
        );
        assert_eq!(records(&[]), "no audit records\n");
        let mut anonymous = record(1);
        anonymous.application = None;
        assert!(records(&[anonymous]).contains("  application uid:33  "));
    }

    #[test]
    fn audit_table_in_batches_keeps_its_header_and_columns() {
        let mut t = RecordTable::default();
        let first = t.push(&[]);
        assert!(first.starts_with("SEQ  TIME  ACTOR  KEY"), "{first}");
        assert_eq!(first.lines().count(), 1);
        let second = t.push(&[record(1)]);
        assert!(!second.contains("SEQ"), "{second}");
        assert_eq!(
            second,
            "1    2026-01-31 18:00:00Z  nginx  web-tls v2  C_Sign     ok      -\n"
        );
        // Columns only widen: a narrower later row is padded as before.
        let mut short = record(2);
        short.operation = "C".into();
        let third = t.push(&[short]);
        assert_eq!(
            third,
            "2    2026-01-31 18:00:00Z  nginx  web-tls v2  C          ok      -\n"
        );
        // Long values: each cut at its column's cap, the reason at the
        // end of the line.
        let mut long = record(3);
        long.application = Some("a".repeat(40));
        long.key = Some("k".repeat(64));
        long.operation = "C_SignEncryptUpdate".into();
        long.result = 0x68;
        long.reason = "why ".repeat(50);
        let text = t.push(&records_fixture()) + &t.push(&[long.clone()]);
        fits(&text);
        assert!(
            text.contains("CKR_KEY_FUNCTION_NOT_PERMITTED  why"),
            "{text}"
        );
        // --wide: everything at full length.
        let text = wide(|| RecordTable::default().push(&[long.clone()]));
        contains_all(
            &text,
            &[&"a".repeat(40), &"k".repeat(64), long.reason.trim_end()],
        );
        // A batch that fits is the table `records` prints.
        let all = records_fixture();
        assert_eq!(
            wide(|| RecordTable::default().push(&all)),
            wide(|| records(&all))
        );
    }

    #[test]
    fn a_request_table_fits_and_wide_shows_everything() {
        let mut long = approval();
        long.id = "0123456789abcdef0123456789abcdef".into();
        long.action = "key.export-to-recipient".into();
        long.target = format!("production-token/{}", "k".repeat(64));
        long.parameters = format!("{{\"text\":\"{}\"}}", "x".repeat(500));
        long.requester = "administrator-with-a-long-name".into();
        long.reason = "r".repeat(300);
        let requests = KeyResponse::Requests(vec![approval(), long.clone()]);
        let text = key_response(&requests);
        fits(&text);
        // The id is whole: it is what `request approve` takes.
        assert!(text.contains(&long.id), "{text}");
        assert!(text.contains('…'), "{text}");
        let local = style::with(
            style::Style {
                wide: false,
                zone: Some(jiff::tz::TimeZone::fixed(jiff::tz::offset(-5))),
            },
            || key_response(&requests),
        );
        fits(&local);
        assert!(local.contains("2026-02-01 13:00:00-05:00"), "{local}");
        let all = wide(|| key_response(&requests));
        contains_all(
            &all,
            &[
                &long.target,
                &long.reason,
                &"x".repeat(500),
                &long.requester,
            ],
        );
        // In the report, indented.
        let mut r = report_fixture();
        r.pending_requests = vec![long];
        fits(&report(&r));
        assert_eq!(shortened("abc", 3), "abc");
        assert_eq!(shortened("abcd", 3), "ab…");
    }

    #[test]
    fn audit_records_json_lines() {
        let text = json_lines(&records_fixture());
        assert_eq!(text.lines().count(), 5);
        assert!(text.ends_with("}\n"));
        for (line, want) in text.lines().zip(records_fixture()) {
            let got: Value = serde_json::from_str(line).unwrap();
            assert_eq!(got["seq"], want.seq);
        }
        let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["seq"], 7);
        assert_eq!(first["at"], "2026-01-31T18:00:00Z");
        assert_eq!(first["micros"], 250_000);
        assert_eq!(first["application"], "nginx");
        assert_eq!(first["mechanism"], "CKM_ECDSA");
        assert_eq!(first["result"], "CKR_OK");
        // A vendor mechanism no table knows: hex; a refusal: its name.
        let denied: Value = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
        assert_eq!(denied["mechanism"], "0x80001234");
        assert_eq!(denied["result"], "CKR_KEY_FUNCTION_NOT_PERMITTED");
        // Control characters stay inside their JSON string: one line each.
        assert!(text
            .lines()
            .nth(1)
            .unwrap()
            .contains("no grant\\nfor decrypt"));
        assert_eq!(json_lines::<AuditRecordInfo>(&[]), "");
    }

    fn intact() -> AuditVerification {
        AuditVerification {
            records: 1234,
            head_seq: 1234,
            checkpoints_ok: 12,
            sealed_through: 1200,
            unsealed: 34,
            anchors_ok: 0,
            first_bad: None,
        }
    }

    #[test]
    fn audit_verification_text_and_json() {
        assert_eq!(
            verification(&intact()),
            "records checked:       1234\n\
             head seq:              1234\n\
             checkpoints verified:  12\n\
             sealed through:        1200\n\
             unsealed:              34\n\
             intact\n"
        );
        let tampered = AuditVerification {
            records: 57,
            first_bad: Some(AuditProblem {
                seq: 57,
                problem: "hash does not match\nits content".into(),
                anchor: false,
            }),
            ..intact()
        };
        let text = verification(&tampered);
        assert!(text.starts_with("records checked:       57\n"), "{text}");
        assert!(
            text.ends_with("unsealed:              34\nFIRST BAD RECORD: 57: hash does not match\\nits content\n"),
            "{text}"
        );
        assert!(!text.contains("intact"));

        let v: Value = serde_json::from_str(&json(&intact())).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "records": 1234, "head_seq": 1234, "checkpoints_ok": 12,
                "sealed_through": 1200, "unsealed": 34, "anchors_ok": 0, "first_bad": null
            })
        );
        let v: Value = serde_json::from_str(&json(&tampered)).unwrap();
        assert_eq!(v["first_bad"]["seq"], 57);
        assert_eq!(
            v["first_bad"]["problem"],
            "hash does not match\nits content"
        );
    }

    fn report_fixture() -> Report {
        use keyward_protocol::admin::{
            AdminFailure, Anomaly, AnomalyThresholds, ApplicationUsage, CertificateInfo, DrillMark,
            ExportAttempts, FailedAdmin, FindingSeverity, KeyUsage, OperationCount, PolicyFinding,
            PolicyFindingKind, Revocation, RotationCompliance, UnmanagedUsage,
        };
        let anomaly = Anomaly {
            kind: AnomalyKind::NewApplication,
            token: "prod".into(),
            key: "web-tls".into(),
            application: Some("nginx".into()),
            exe: Some("/tmp/copy".into()),
            hour: None,
            uses: 3,
            detail: "application \"nginx\" (/tmp/copy) used the key 3 times".into(),
        };
        let key = KeyReport {
            name: "web-tls".into(),
            token: "prod".into(),
            class: "tls".into(),
            purpose: "signing".parse().unwrap(),
            algorithm: "ec:p256".parse().unwrap(),
            state: "active".parse().unwrap(),
            active_version: Some(2),
            age_secs: Some(3 * 86_400),
            cryptoperiod_secs: Some(30 * 86_400),
            rotation_interval_secs: Some(7 * 86_400),
            protect_until: Some(T0 + 27 * 86_400),
            next_rotation: Some(T0 + 4 * 86_400),
            overdue: false,
            certificate: Some(CertificateInfo {
                not_after: Some(T0 + 86_400),
                problem: None,
                expiring: false,
            }),
            usage: KeyUsage {
                window: 8,
                baseline: 40,
                total: 100,
                failed: 1,
                by_application: vec![ApplicationUsage {
                    application: "nginx".into(),
                    exe: "/usr/sbin/nginx".into(),
                    window: 5,
                    baseline: 40,
                    total: 97,
                    last_at: T0,
                }],
            },
            learning: false,
            anomalies: vec![anomaly.clone()],
            exports: ExportAttempts {
                refused: vec![OperationCount {
                    operation: "wrapping out".into(),
                    count: 2,
                }],
                refused_window: 1,
                wraps: 0,
                wraps_window: 0,
            },
            drift: vec!["version 2: CKA_EXTRACTABLE is on, and the class has no backup".into()],
            revocations: vec![Revocation {
                seq: 99,
                action: "revoke".into(),
                effective_at: T0,
                requested_at: Some(T0),
                latency_us: Some(12_345),
                versions: vec![1],
                uses_after: 0,
                first_use_after: None,
                no_use_after: true,
            }],
            hsm_error: None,
            last_backup: Some(BackupMark {
                at: T0,
                id: ID_A.into(),
            }),
            last_drill: Some(DrillMark {
                at: T0 + 60,
                id: ID_A.into(),
                ok: true,
            }),
            backup_missing: false,
            held_by_backups: Vec::new(),
            policy_findings: Vec::new(),
        };
        let mut idle = key.clone();
        idle.last_backup = None;
        idle.last_drill = None;
        idle.backup_missing = true;
        idle.name = "old".into();
        idle.overdue = true;
        idle.certificate = None;
        idle.learning = true;
        idle.anomalies.clear();
        idle.drift.clear();
        idle.revocations.clear();
        idle.usage.by_application.clear();
        idle.policy_findings = vec![
            PolicyFinding {
                kind: PolicyFindingKind::WeakAlgorithm,
                severity: FindingSeverity::Refused,
                detail: "rsa:1024 is below 112-bit security (NIST SP 800-131A) and class \"tls\" is not marked legacy".into(),
            },
            PolicyFinding {
                kind: PolicyFindingKind::LongCryptoperiod,
                severity: FindingSeverity::Warning,
                detail: "class \"tls\", protect_period: 36500d is longer than the recommended 1095d".into(),
            },
        ];
        Report {
            generated_at: T0,
            window_secs: 3600,
            baseline_secs: 7 * 86_400,
            thresholds: AnomalyThresholds::default(),
            keys: vec![key, idle],
            rotation: RotationCompliance {
                active: 2,
                compliant: 1,
                overdue: vec!["prod/old".into()],
            },
            failed_admin: FailedAdmin {
                window: 1,
                period: 2,
                total: 3,
                last: vec![AdminFailure {
                    seq: 42,
                    at: T0,
                    operation: "key.create".into(),
                    key: Some("x".into()),
                    uid: Some(0),
                    reason: "not found: no key class \"nope\"".into(),
                    result: keyward_policy::KEYWARD_NOT_FOUND,
                }],
            },
            pending_requests: vec![approval()],
            unmanaged: vec![UnmanagedUsage {
                token: "prod".into(),
                object: "id:0102".into(),
                application: "lab".into(),
                window: 4,
                total: 9,
            }],
            anomalies: vec![anomaly],
        }
    }

    #[test]
    fn report_text_shows_keys_details_and_totals() {
        let text = report(&report_fixture());
        contains_all(
            &text,
            &[
                "KEY      STATE   NEXT ROTATION         OVERDUE  USES WINDOW  ANOMALIES  BACKUP\n",
                "web-tls  active  2026-02-04 18:00:00Z  no       8            1          ok\n",
                "old      active  2026-02-04 18:00:00Z  yes      8            learning   MISSING\n",
                "failed admin actions: 1 in the window, 2 with the baseline, 3 in all\n  \
                 SEQ  TIME                  BY     ACTION      KEY  RESULT             WHY\n  \
                 42   2026-01-31 18:00:00Z  uid:0  key.create  x    KEYWARD_NOT_FOUND  not found: no key class \"no…\n",
            ],
        );
        fits(&text);
        let text = wide(|| report(&report_fixture()));
        contains_all(
            &text,
            &[
                "report at 2026-01-31 18:00:00Z: window 1h (from 2026-01-31 17:00:00Z), baseline 7d before it\n",
                "TOKEN  KEY      CLASS  STATE   VERSION  AGE  ROTATE EVERY  CRYPTOPERIOD  NEXT ROTATION         OVERDUE  CERT EXPIRES",
                "prod   web-tls  tls    active  2        3d   7d            30d           2026-02-04 18:00:00Z  no       2026-02-01 18:00:00Z  8",
                "prod   old      tls    active  2        3d   7d            30d           2026-02-04 18:00:00Z  yes      none",
                "learning",
                "key prod/web-tls\n",
                "  uses:             8 in the window, 40 in the baseline, 100 in all (1 failed)\n",
                "  certificate:      expires 2026-02-01 18:00:00Z\n",
                "  export attempts:  refused wrapping out ×2 (1 in the window)\n",
                "  /usr/sbin/nginx",
                "  anomaly: new application: application \"nginx\" (/tmp/copy) used the key 3 times\n",
                "  drift: version 2: CKA_EXTRACTABLE is on",
                "  revoke at 2026-01-31 18:00:00Z (record 99): latency 12.3 ms; versions 1; no use after it: yes\n",
                "  anomalies:        none (learning: no use in the baseline yet)\n",
                "rotation compliance: 50% (1 of 2 active keys not overdue); overdue: prod/old\n",
                "KEYWARD_NOT_FOUND",
                "failed admin actions: 1 in the window, 2 with the baseline, 3 in all\n",
                "key.create",
                "not found: no key class",
                "approval requests waiting: 1\n",
                "req-7f3a",
                "unmanaged objects:\n",
                "id:0102",
                "anomalies: 1\n",
                "keys against the policy: 1 the policy would refuse (1 refusal, 1 warning)\n  prod/old\n    refused: rsa:1024 is below 112-bit security (NIST SP 800-131A) and class \"tls\" is not marked\n      legacy\n    warning: class \"tls\", protect_period: 36500d is longer than the recommended 1095d\n",
            ],
        );
        for line in text.lines() {
            assert_eq!(line, line.trim_end(), "trailing blanks in {line:?}");
        }
        let mut empty = report_fixture();
        empty.keys.clear();
        empty.unmanaged.clear();
        empty.anomalies.clear();
        empty.pending_requests.clear();
        empty.rotation = Default::default();
        let text = report(&empty);
        contains_all(
            &text,
            &[
                "no managed keys\n",
                "approval requests waiting: none\n",
                "rotation compliance: no active keys\n",
                "unmanaged objects: no uses\n",
                "anomalies: none\n",
                "keys against the policy: nothing the policy would refuse\n",
            ],
        );
    }

    #[test]
    fn report_json_is_one_document() {
        let v: Value = serde_json::from_str(&json(&report_fixture())).unwrap();
        assert_eq!(v["keys"][0]["name"], "web-tls");
        assert_eq!(v["keys"][0]["anomalies"][0]["kind"], "new_application");
        assert_eq!(v["generated_at"], "2026-01-31T18:00:00Z");
        assert_eq!(v["window_secs"], 3600);
        assert_eq!(v["keys"][0]["revocations"][0]["no_use_after"], true);
        assert_eq!(v["rotation"]["compliant"], 1);
        assert_eq!(v["failed_admin"]["total"], 3);
        assert_eq!(v["thresholds"]["spike_factor"], 10);
        let finding = &v["keys"][1]["policy_findings"][0];
        assert_eq!(finding["kind"], "weak_algorithm");
        assert_eq!(finding["severity"], "refused");
        assert_eq!(v["keys"][0]["policy_findings"], serde_json::json!([]));
        // The requests waiting carry their digest, as `request show` does.
        let v = crate::json::report_view(&report_fixture());
        assert_eq!(
            v["pending_requests"][0]["digest"],
            hex::encode(approval().content().digest())
        );
        assert_eq!(
            v["pending_requests"][0]["created_at"],
            "2026-01-31T18:00:00Z"
        );
    }
}
