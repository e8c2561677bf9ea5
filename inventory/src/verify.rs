//! The verify walk's judgement, with no storage: the checkpoints and
//! anchors met along a recomputed chain ([`Seals`]), and whether one
//! stored record is the chain's next link ([`link`]). The store reads the
//! records in seq order and hands each to these; what it finds becomes the
//! [`VerifyReport`].

use crate::audit::{
    checkpoint_message, record_hash_on, Anchor, AuditRecord, BadRecord, Checkpoint, Hash, Problem,
    VerifyReport,
};

/// How far [`AuditLog::verify`](crate::audit::AuditLog::verify) looks for
/// the seq a moved record was written under (to tell an insertion or
/// deletion from an edit).
const MOVE_SEARCH: u64 = 64;

/// Checkpoints walked alongside the chain.
pub(crate) struct Seals<'a> {
    list: Vec<std::result::Result<Checkpoint, String>>,
    next: usize,
    check_signature: &'a dyn Fn(&[u8], &[u8]) -> bool,
    ok: u64,
    sealed_through: u64,
    /// Anchors kept off the host, by seq.
    anchors: Vec<Anchor>,
    next_anchor: usize,
    anchors_ok: u64,
    /// The seq of the last anchor that held (0: none).
    anchored_through: u64,
}

impl Seals<'_> {
    /// Checks every checkpoint and anchor at `seq`, where the recomputed
    /// head is `head`; the first that fails gives the first bad record.
    pub(crate) fn at(&mut self, seq: u64, head: &Hash) -> Option<BadRecord> {
        self.checkpoints_at(seq, head)
            .or_else(|| self.anchors_at(seq, head))
    }

    /// Checks every anchor at `seq` against the recomputed `head`.
    fn anchors_at(&mut self, seq: u64, head: &Hash) -> Option<BadRecord> {
        while let Some(a) = self.anchors.get(self.next_anchor) {
            if a.seq != seq {
                return None;
            }
            self.next_anchor += 1;
            let a = a.clone();
            if let Some(problem) = self.judge_anchor(&a, Some(head)) {
                // A rewrite below the anchor: name the first record it no
                // longer proves (the one after the last anchor that held).
                return Some(BadRecord {
                    seq: self.anchored_through + 1,
                    problem,
                });
            }
        }
        None
    }

    /// `head`: the recomputed head at the anchor's seq (`None`: the trail
    /// ends before it).
    fn judge_anchor(&mut self, a: &Anchor, head: Option<&Hash>) -> Option<Problem> {
        let message = checkpoint_message(a.seq, &a.head, a.created_at);
        if !(self.check_signature)(&message, &a.signature) {
            return Some(Problem::AnchorBadSignature { anchor: a.seq });
        }
        match head {
            None => Some(Problem::AnchorMissing { anchor: a.seq }),
            Some(h) if *h != a.head => Some(Problem::AnchorMismatch { anchor: a.seq }),
            Some(_) => {
                self.anchors_ok += 1;
                self.anchored_through = a.seq;
                None
            }
        }
    }

    /// Checks every checkpoint at `seq`, where the recomputed head is
    /// `head`; the first that fails gives the first bad record.
    fn checkpoints_at(&mut self, seq: u64, head: &Hash) -> Option<BadRecord> {
        while let Some(entry) = self.list.get(self.next) {
            let cp = match entry {
                Ok(cp) if cp.seq == seq => cp.clone(),
                Ok(_) => return None,
                // An undecodable checkpoint row (ordered by its stored seq)
                // seals nothing; it is ignored like a missing one.
                Err(_) => {
                    self.next += 1;
                    continue;
                }
            };
            self.next += 1;
            if let Some(problem) = self.judge(&cp, Some(head)) {
                return Some(BadRecord {
                    seq: self.sealed_through + 1,
                    problem,
                });
            }
        }
        None
    }

    /// `head`: the recomputed head at the checkpoint's seq (`None`: the
    /// trail ends before it).
    fn judge(&mut self, cp: &Checkpoint, head: Option<&Hash>) -> Option<Problem> {
        let message = checkpoint_message(cp.seq, &cp.head, cp.created_at);
        if !(self.check_signature)(&message, &cp.signature) {
            return Some(Problem::BadSignature { checkpoint: cp.seq });
        }
        match head {
            None => Some(Problem::Truncated { checkpoint: cp.seq }),
            Some(h) if *h != cp.head => Some(Problem::Rewritten { checkpoint: cp.seq }),
            Some(_) => {
                self.ok += 1;
                self.sealed_through = cp.seq;
                None
            }
        }
    }
}

/// For a record whose hash does not match at `seq`: the seq it does match,
/// if it was only moved (within [`MOVE_SEARCH`]).
fn written_as(rec: &AuditRecord, seq: u64) -> Option<u64> {
    (1..=MOVE_SEARCH)
        .flat_map(|d| [seq.checked_sub(d), seq.checked_add(d)])
        .flatten()
        .filter(|&s| s >= 1)
        .find(|&s| record_hash_on(&rec.prev_hash, s, &rec.event, rec.host.as_deref()) == rec.hash)
}

impl Seals<'_> {
    /// After a whole chain ending at `head_seq`: a genuine checkpoint past
    /// its end means the tail was cut, and an anchor past its end that it
    /// was rolled back.
    pub(crate) fn past_the_end(&mut self, head_seq: u64) -> Option<BadRecord> {
        while let Some(entry) = self.list.get(self.next).cloned() {
            self.next += 1;
            let Ok(cp) = entry else { continue };
            if let Some(problem) = self.judge(&cp, None) {
                let seq = match problem {
                    Problem::Truncated { .. } => head_seq + 1,
                    _ => self.sealed_through + 1,
                };
                return Some(BadRecord { seq, problem });
            }
        }
        while let Some(a) = self.anchors.get(self.next_anchor).cloned() {
            self.next_anchor += 1;
            if let Some(problem) = self.judge_anchor(&a, None) {
                let seq = match problem {
                    Problem::AnchorMissing { .. } => head_seq + 1,
                    _ => self.anchored_through + 1,
                };
                return Some(BadRecord { seq, problem });
            }
        }
        None
    }
}

impl<'a> Seals<'a> {
    /// Seals for a walk: the stored checkpoints (by seq; an undecodable
    /// row is its error text), the caller's signature check, and the
    /// anchors kept off the host (any order).
    pub(crate) fn new(
        list: Vec<std::result::Result<Checkpoint, String>>,
        check_signature: &'a dyn Fn(&[u8], &[u8]) -> bool,
        anchors: &[Anchor],
    ) -> Seals<'a> {
        let mut anchors = anchors.to_vec();
        anchors.sort_by_key(|a| a.seq);
        Seals {
            list,
            next: 0,
            check_signature,
            ok: 0,
            sealed_through: 0,
            anchors,
            next_anchor: 0,
            anchors_ok: 0,
            anchored_through: 0,
        }
    }

    /// The report of a walk that read `records` records of a trail whose
    /// last seq is `head_seq`, and stopped at `first_bad` (`None`: intact).
    pub(crate) fn report(
        &self,
        records: u64,
        head_seq: u64,
        first_bad: Option<BadRecord>,
    ) -> VerifyReport {
        VerifyReport {
            records,
            head_seq,
            checkpoints_ok: self.ok,
            sealed_through: self.sealed_through,
            unsealed: head_seq.saturating_sub(self.sealed_through),
            anchors_ok: self.anchors_ok,
            first_bad,
        }
    }
}

/// The record stored as seq `stored_seq` checked as the next link of the
/// chain: numbered `expected` and chained to `running`. `decode` reads the
/// record (its error: what is wrong with the stored row), called only when
/// the seq is in order. Its seq and hash, or the first problem found.
pub(crate) fn link(
    stored_seq: i64,
    expected: u64,
    running: &Hash,
    decode: impl FnOnce() -> std::result::Result<AuditRecord, String>,
) -> std::result::Result<(u64, Hash), BadRecord> {
    let bad = |seq, problem| Err(BadRecord { seq, problem });
    let seq = match u64::try_from(stored_seq) {
        Ok(s) if s >= expected => s,
        // Numbered 0 or below (only possible before record 1).
        _ => return bad(expected, Problem::Undecodable(format!("seq {stored_seq}"))),
    };
    if seq > expected {
        return bad(expected, Problem::Deleted { through: seq - 1 });
    }
    let rec = match decode() {
        Ok(rec) => rec,
        Err(what) => return bad(seq, Problem::Undecodable(what)),
    };
    if record_hash_on(&rec.prev_hash, seq, &rec.event, rec.host.as_deref()) != rec.hash {
        return match written_as(&rec, seq) {
            Some(o) if o < seq => bad(o, Problem::Inserted { next: seq }),
            Some(o) => bad(seq, Problem::Moved { written_as: o }),
            None => bad(seq, Problem::Edited),
        };
    }
    if rec.prev_hash != *running {
        return if seq == 1 {
            bad(1, Problem::Genesis)
        } else {
            bad(seq - 1, Problem::Replaced)
        };
    }
    Ok((seq, rec.hash))
}
