//! Splitting a secret into sealed shares ([`split`]) and rebuilding it
//! from opened ones ([`combine`]). The field arithmetic is blahaj's.

use blahaj::{Share, Sharks};
use zeroize::Zeroizing;

use crate::error::EscrowError;
use crate::record::{check_name, key_check, short_check, ShareRecord, MAX_SECRET};
use crate::seal::{recipient, seal};

/// A custodian of a share: their name (the roster's administrator) and
/// their age X25519 recipient (`age1...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Custodian {
    /// The administrator's name.
    pub name: String,
    /// Their `share_recipient`.
    pub recipient: String,
}

/// One share, sealed to its custodian: the armored age file to hand them,
/// and the digest of the record inside (SHA-256 of its canonical
/// encoding), which the ceremony's record keeps so that a share can be
/// matched to it without opening it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedShare {
    /// The custodian's name.
    pub custodian: String,
    /// The share's index, 1 to the number of custodians.
    pub index: u8,
    /// The armored age file.
    pub armored: String,
    /// SHA-256 of the share record's canonical encoding.
    pub digest: [u8; 32],
}

/// Splits `secret` into one share per custodian, any `threshold` of which
/// rebuild it, each sealed to its custodian's recipient. Refused: an empty
/// or over-long secret, a threshold under 2 (no split knowledge) or above
/// the number of custodians, more than 255 custodians, a bad deployment or
/// custodian name, two custodians of one name, an invalid recipient, two
/// custodians with one recipient.
pub fn split(
    secret: &[u8],
    deployment: &str,
    threshold: u8,
    custodians: &[Custodian],
) -> Result<Vec<SealedShare>, EscrowError> {
    if secret.is_empty() || secret.len() > MAX_SECRET {
        return Err(EscrowError::SecretLength {
            len: secret.len(),
            max: MAX_SECRET,
        });
    }
    check_name(deployment).map_err(EscrowError::Deployment)?;
    if threshold < 2 {
        return Err(EscrowError::ThresholdTooLow(threshold));
    }
    let count = u8::try_from(custodians.len())
        .map_err(|_| EscrowError::TooManyCustodians(custodians.len()))?;
    if count < threshold {
        return Err(EscrowError::ThresholdTooHigh {
            threshold,
            count: custodians.len(),
        });
    }
    let mut recipients: Vec<age::x25519::Recipient> = Vec::with_capacity(custodians.len());
    for (i, c) in custodians.iter().enumerate() {
        check_name(&c.name).map_err(|m| {
            EscrowError::CustodianName(format!("\"{}\": {m}", c.name.escape_debug()))
        })?;
        if custodians[..i].iter().any(|o| o.name == c.name) {
            return Err(EscrowError::DuplicateCustodianName(c.name.clone()));
        }
        let r = recipient(&c.recipient)
            .map_err(|e| EscrowError::Recipient(format!("custodian \"{}\": {e}", c.name)))?;
        if let Some(first) = recipients.iter().position(|o| *o == r) {
            return Err(EscrowError::DuplicateRecipient {
                first: custodians[first].name.clone(),
                second: c.name.clone(),
            });
        }
        recipients.push(r);
    }
    let check = key_check(secret);
    let dealer = Sharks(threshold).dealer(secret);
    let mut sealed = Vec::with_capacity(custodians.len());
    for ((custodian, recipient), share) in custodians.iter().zip(&recipients).zip(dealer) {
        // blahaj's bytes of a share: its index, then its value.
        let bytes = Zeroizing::new(Vec::from(&share));
        let (index, value) = match bytes.split_first() {
            Some((index, value)) => (*index, Zeroizing::new(value.to_vec())),
            None => (0, Zeroizing::new(Vec::new())),
        };
        let record = ShareRecord::new(
            deployment,
            check,
            &custodian.name,
            threshold,
            count,
            index,
            value,
        )?;
        sealed.push(SealedShare {
            custodian: custodian.name.clone(),
            index: record.index(),
            armored: seal(&record, recipient)?,
            digest: record.digest(),
        });
    }
    Ok(sealed)
}

/// Rebuilds the secret from opened shares of the backup key whose check
/// value is `expected` in `deployment`. Refused, each with an error of its
/// own: no share, a share of another deployment or another backup key,
/// shares that disagree (threshold, count, length), two shares of one
/// index or one custodian, fewer shares than the threshold, and shares
/// that rebuild another secret (at least one is wrong; with more shares
/// than needed, the wrong one is named when leaving out one share is
/// enough).
pub fn combine(
    records: &[ShareRecord],
    deployment: &str,
    expected: &[u8; 32],
) -> Result<Zeroizing<Vec<u8>>, EscrowError> {
    let first = records.first().ok_or(EscrowError::NoShares)?;
    for (i, r) in records.iter().enumerate() {
        if r.deployment() != deployment {
            return Err(EscrowError::OtherDeployment {
                custodian: r.custodian().to_owned(),
                found: r.deployment().to_owned(),
                expected: deployment.to_owned(),
            });
        }
        if r.key_check() != expected {
            return Err(EscrowError::OtherBackupKey {
                custodian: r.custodian().to_owned(),
                found: short_check(r.key_check()),
                expected: short_check(expected),
            });
        }
        let differs = if r.threshold() != first.threshold() {
            Some(format!(
                "its threshold is {}, not {}",
                r.threshold(),
                first.threshold()
            ))
        } else if r.count() != first.count() {
            Some(format!(
                "it is one of {} shares, not {}",
                r.count(),
                first.count()
            ))
        } else if r.share().len() != first.share().len() {
            Some("its share value has another length".to_owned())
        } else {
            None
        };
        if let Some(what) = differs {
            return Err(EscrowError::Mismatch {
                custodian: r.custodian().to_owned(),
                what,
            });
        }
        if let Some(o) = records[..i].iter().find(|o| o.index() == r.index()) {
            return Err(EscrowError::DuplicateIndex {
                index: r.index(),
                first: o.custodian().to_owned(),
                second: r.custodian().to_owned(),
            });
        }
        if records[..i].iter().any(|o| o.custodian() == r.custodian()) {
            return Err(EscrowError::DuplicateCustodian(r.custodian().to_owned()));
        }
    }
    let threshold = first.threshold();
    if records.len() < usize::from(threshold) {
        return Err(EscrowError::NotEnoughShares {
            needed: threshold,
            given: records.len(),
        });
    }
    let shares = records
        .iter()
        .map(to_share)
        .collect::<Result<Vec<Share>, EscrowError>>()?;
    if let Some(secret) = rebuild(threshold, &shares, expected) {
        return Ok(secret);
    }
    // One share too many at least: the one whose absence lets the others
    // rebuild the key is the wrong one. Cheap for the few shares of a
    // ceremony; not tried for large sets.
    if records.len() > usize::from(threshold) && records.len() <= LEAVE_ONE_OUT_MAX {
        for (i, r) in records.iter().enumerate() {
            let others: Vec<Share> = shares
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, s)| s.clone())
                .collect();
            if rebuild(threshold, &others, expected).is_some() {
                return Err(EscrowError::WrongShare {
                    custodian: r.custodian().to_owned(),
                    index: r.index(),
                    expected: short_check(expected),
                });
            }
        }
    }
    Err(EscrowError::WrongShares {
        expected: short_check(expected),
    })
}

/// The most shares for which a wrong one is looked for by leaving each
/// out in turn.
const LEAVE_ONE_OUT_MAX: usize = 16;

/// A record's share in blahaj's form (index, then value).
fn to_share(record: &ShareRecord) -> Result<Share, EscrowError> {
    let mut bytes = Zeroizing::new(Vec::with_capacity(record.share().len() + 1));
    bytes.push(record.index());
    bytes.extend_from_slice(record.share());
    Share::try_from(bytes.as_slice()).map_err(|e| EscrowError::Format(e.to_owned()))
}

/// The secret the shares rebuild, when its check value is `expected`.
fn rebuild(threshold: u8, shares: &[Share], expected: &[u8; 32]) -> Option<Zeroizing<Vec<u8>>> {
    let secret = Zeroizing::new(Sharks(threshold).recover(shares).ok()?);
    (key_check(&secret) == *expected).then_some(secret)
}
