//! What the trail says of one key's backups: the `backup` records that
//! `keyward backup create` writes per key version (reason `in backup
//! <id>`) and the `backup drill` records of `keyward backup verify`
//! (reason `backup <id>: <detail>`, result 0 when the version worked).
//!
//! Pure functions of the key's records, so that `keyward report`, the
//! destruction and `keyward key show` read them the same way.

use std::collections::{BTreeMap, BTreeSet};

use keyward_inventory::usage::EventRow;
use keyward_policy::KeyState;
use keyward_protocol::admin::{BackupMark, DrillMark};

use crate::keys::KeyView;

/// The operation of the record of a key version in a backup.
pub const BACKUP: &str = "backup";
/// The operation of the record of a key version in a drill.
pub const DRILL: &str = "backup drill";
/// The operations of [`BACKUP`] and [`DRILL`].
pub const OPERATIONS: &[&str] = &[BACKUP, DRILL];

/// The hex digits of a backup's id (a SHA-256).
const ID_LEN: usize = 64;

/// The backup a record of a key version names, if it is a [`BACKUP`] or
/// [`DRILL`] record of one.
pub fn backup_id(row: &EventRow) -> Option<&str> {
    let rest = match row.operation.as_str() {
        BACKUP => row.reason.strip_prefix("in backup ")?,
        DRILL => row.reason.strip_prefix("backup ")?,
        _ => return None,
    };
    let id = rest.get(..ID_LEN)?;
    let end_ok = matches!(rest.as_bytes().get(ID_LEN), None | Some(b':'));
    (row.key_version.is_some() && end_ok && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// The span of one key's life the records count in (unix seconds): from
/// its creation to its destruction. Records outside it are of another key
/// that had its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Life {
    pub created_at: i64,
    pub destroyed_at: Option<i64>,
}

impl Life {
    fn holds(&self, at: i64) -> bool {
        at >= self.created_at && self.destroyed_at.is_none_or(|d| at <= d)
    }
}

/// The span of `key`'s life: from its creation to its destruction (the
/// newest `destroyed_at` of its versions), when it is destroyed.
pub fn life(key: &KeyView) -> Life {
    Life {
        created_at: key.record.created_at,
        destroyed_at: if key.record.state == KeyState::Destroyed {
            key.versions.iter().filter_map(|v| v.destroyed_at).max()
        } else {
            None
        },
    }
}

/// The backups that hold `key` (oldest first), among `rows` (records of
/// any key, in trail order): its records on its token, in its life.
pub fn holding(rows: &[EventRow], key: &KeyView) -> Vec<BackupMark> {
    let r = &key.record;
    let mine = rows.iter().filter(|e| {
        e.key.as_deref() == Some(r.name.as_str()) && e.token.as_deref().is_none_or(|t| t == r.token)
    });
    marks(mine, life(key)).held_by
}

/// What a key's records say of its backups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marks {
    /// The newest backup holding one of its versions.
    pub last_backup: Option<BackupMark>,
    /// The newest drill of it.
    pub last_drill: Option<DrillMark>,
    /// The versions some backup holds.
    pub versions: BTreeSet<u32>,
    /// Every backup that holds one of its versions, oldest first.
    pub held_by: Vec<BackupMark>,
}

/// The marks of one key from its records (`rows`, in trail order: by
/// `seq`), counting only those in `life`.
pub fn marks<'a>(rows: impl IntoIterator<Item = &'a EventRow>, life: Life) -> Marks {
    let mut m = Marks::default();
    let mut held: BTreeSet<&str> = BTreeSet::new();
    // The newest drill: its record and, per version, its newest result
    // for that backup.
    let mut drills: Vec<(&EventRow, &str)> = Vec::new();
    for row in rows.into_iter().filter(|r| life.holds(r.at)) {
        let (Some(id), Some(version)) = (backup_id(row), row.key_version) else {
            continue;
        };
        if row.operation == BACKUP {
            m.versions.insert(version);
            let mark = BackupMark {
                at: row.at,
                id: id.to_owned(),
            };
            if held.insert(id) {
                m.held_by.push(mark.clone());
            }
            if m.last_backup.as_ref().is_none_or(|b| b.at <= row.at) {
                m.last_backup = Some(mark);
            }
        } else {
            drills.push((row, id));
        }
    }
    m.held_by.sort_by_key(|b| b.at);
    if let Some(&(newest, id)) = drills.iter().max_by_key(|(r, _)| r.seq) {
        let mut by_version: BTreeMap<u32, &EventRow> = BTreeMap::new();
        for &(row, _) in drills.iter().filter(|(_, i)| *i == id) {
            if let Some(v) = row.key_version {
                let e = by_version.entry(v).or_insert(row);
                if row.seq > e.seq {
                    *e = row;
                }
            }
        }
        m.last_drill = Some(DrillMark {
            at: newest.at,
            id: id.to_owned(),
            ok: by_version.values().all(|r| r.result == 0),
        });
    }
    m
}

/// Whether a key wants a backup it has not got: its class allows backup,
/// it is not destroyed, and no backup holds its `current` version (or,
/// with none, no backup holds any).
pub fn backup_missing(allowed: bool, state: KeyState, current: Option<u32>, m: &Marks) -> bool {
    allowed
        && state != KeyState::Destroyed
        && match current {
            Some(v) => !m.versions.contains(&v),
            None => m.last_backup.is_none(),
        }
}

/// `held by backups: <id16> (<date>), ...`, or `held by no backup`, for
/// the destruction's record.
pub fn held_note(held: &[BackupMark]) -> String {
    if held.is_empty() {
        return "held by no backup".to_owned();
    }
    let list: Vec<String> = held
        .iter()
        .map(|b| format!("{} ({})", b.id.get(..16).unwrap_or(&b.id), date(b.at)))
        .collect();
    format!("held by backups: {}", list.join(", "))
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
fn date(secs: i64) -> String {
    jiff::Timestamp::from_second(secs).map_or_else(
        |_| format!("unix time {secs}"),
        |t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aa00000000000000000000000000000000000000000000000000000000000001";
    const B: &str = "bb00000000000000000000000000000000000000000000000000000000000002";

    fn row(seq: u64, at: i64, operation: &str, version: u32, reason: String) -> EventRow {
        EventRow {
            seq,
            at,
            micros: 0,
            token: Some("prod".into()),
            key: Some("release".into()),
            key_version: Some(version),
            operation: operation.into(),
            actor: "administrator".into(),
            uid: Some(0),
            result: 0,
            reason,
        }
    }

    fn backup(seq: u64, at: i64, version: u32, id: &str) -> EventRow {
        row(seq, at, BACKUP, version, format!("in backup {id}"))
    }

    fn drill(seq: u64, at: i64, version: u32, id: &str, ok: bool) -> EventRow {
        let mut r = row(
            seq,
            at,
            DRILL,
            version,
            format!("backup {id}: ECDSA signature"),
        );
        if !ok {
            r.result = 6;
        }
        r
    }

    const ALWAYS: Life = Life {
        created_at: 0,
        destroyed_at: None,
    };

    #[test]
    fn ids_are_read_only_from_backup_and_drill_records() {
        assert_eq!(backup_id(&backup(1, 1, 1, A)), Some(A));
        assert_eq!(backup_id(&drill(1, 1, 1, B, true)), Some(B));
        // Short, not hex, or another operation: none.
        assert_eq!(backup_id(&backup(1, 1, 1, &A[..63])), None);
        assert_eq!(backup_id(&backup(1, 1, 1, &A.replace('a', "g"))), None);
        assert_eq!(backup_id(&backup(1, 1, 1, &format!("{A}0"))), None);
        let mut other = backup(1, 1, 1, A);
        other.operation = "revoke".into();
        assert_eq!(backup_id(&other), None);
        // The record of the whole backup names no version.
        let mut whole = row(1, 1, BACKUP, 1, format!("backup {A}: 1 keys"));
        whole.key_version = None;
        assert_eq!(backup_id(&whole), None);
    }

    #[test]
    fn the_newest_backup_and_every_one_holding_the_key() {
        let rows = [
            backup(1, 100, 1, A),
            backup(2, 100, 2, A),
            backup(5, 200, 2, B),
            backup(6, 200, 3, B),
        ];
        let m = marks(&rows, ALWAYS);
        assert_eq!(
            m.last_backup,
            Some(BackupMark {
                at: 200,
                id: B.into()
            })
        );
        assert_eq!(m.versions, BTreeSet::from([1, 2, 3]));
        assert_eq!(
            m.held_by,
            vec![
                BackupMark {
                    at: 100,
                    id: A.into()
                },
                BackupMark {
                    at: 200,
                    id: B.into()
                }
            ]
        );
        assert_eq!(m.last_drill, None);
        assert_eq!(marks(&[], ALWAYS), Marks::default());
    }

    #[test]
    fn records_outside_the_keys_life_are_of_another_key() {
        let rows = [
            backup(1, 50, 1, A),
            backup(2, 150, 1, B),
            backup(3, 250, 1, A),
        ];
        let life = Life {
            created_at: 100,
            destroyed_at: Some(200),
        };
        let m = marks(&rows, life);
        assert_eq!(m.held_by.len(), 1);
        assert_eq!(m.held_by[0].id, B);
        assert_eq!(m.last_backup.map(|b| b.at), Some(150));
    }

    #[test]
    fn the_newest_drill_is_ok_when_each_of_its_versions_worked() {
        // A failed drill of A, then B drilled: the newest is B's, ok.
        let rows = [
            drill(1, 10, 1, A, false),
            drill(2, 10, 2, A, true),
            drill(3, 20, 1, B, true),
            drill(4, 20, 2, B, true),
        ];
        let m = marks(&rows, ALWAYS);
        let d = m.last_drill.unwrap();
        assert_eq!((d.at, d.id.as_str(), d.ok), (20, B, true));
        // One version of the newest drill failed: not ok.
        let rows = [drill(1, 10, 1, A, true), drill(2, 10, 2, A, false)];
        assert_eq!(marks(&rows, ALWAYS).last_drill.map(|d| d.ok), Some(false));
        // The same backup drilled again after a failure: the rerun counts.
        let rows = [
            drill(1, 10, 1, A, false),
            drill(2, 10, 2, A, true),
            drill(3, 30, 1, A, true),
            drill(4, 30, 2, A, true),
        ];
        let d = marks(&rows, ALWAYS).last_drill.unwrap();
        assert_eq!((d.at, d.ok), (30, true));
        // Drills are not backups.
        assert_eq!(marks(&rows, ALWAYS).last_backup, None);
    }

    #[test]
    fn the_flag_wants_the_current_version_backed_up() {
        let m = marks(&[backup(1, 1, 1, A)], ALWAYS);
        let none = Marks::default();
        assert!(backup_missing(true, KeyState::Active, Some(1), &none));
        assert!(!backup_missing(true, KeyState::Active, Some(1), &m));
        // Rotated since: version 2 is in no backup.
        assert!(backup_missing(true, KeyState::Active, Some(2), &m));
        // No live version: any backup will do.
        assert!(backup_missing(true, KeyState::Deactivated, None, &none));
        assert!(!backup_missing(true, KeyState::Deactivated, None, &m));
        // A class without backup, or a destroyed key: never flagged.
        assert!(!backup_missing(false, KeyState::Active, Some(1), &none));
        assert!(!backup_missing(true, KeyState::Destroyed, None, &none));
    }

    #[test]
    fn the_note_names_each_backup_by_its_short_id_and_date() {
        assert_eq!(held_note(&[]), "held by no backup");
        let held = [
            BackupMark {
                at: 0,
                id: A.into(),
            },
            BackupMark {
                at: 86_400,
                id: B.into(),
            },
        ];
        assert_eq!(
            held_note(&held),
            "held by backups: aa00000000000000 (1970-01-01 00:00:00 UTC), \
             bb00000000000000 (1970-01-02 00:00:00 UTC)"
        );
    }
}
