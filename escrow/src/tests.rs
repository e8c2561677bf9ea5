//! Splitting, sealing, opening and combining, and every refusal.

use super::*;

const DEPLOYMENT: &str = "prod-eu";

struct Person {
    name: String,
    identity: Zeroizing<String>,
    recipient: String,
}

fn people(n: usize) -> Vec<Person> {
    (0..n)
        .map(|i| {
            let (identity, recipient) = new_identity();
            Person {
                name: format!("custodian-{i}"),
                identity,
                recipient,
            }
        })
        .collect()
}

fn custodians(people: &[Person]) -> Vec<Custodian> {
    people
        .iter()
        .map(|p| Custodian {
            name: p.name.clone(),
            recipient: p.recipient.clone(),
        })
        .collect()
}

fn secret() -> Vec<u8> {
    (0..64u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect()
}

/// A 3-of-5 split of [`secret`], opened by each custodian.
fn three_of_five() -> (Vec<Person>, Vec<SealedShare>, Vec<ShareRecord>) {
    let people = people(5);
    let sealed = split(&secret(), DEPLOYMENT, 3, &custodians(&people)).expect("split");
    let records = sealed
        .iter()
        .zip(&people)
        .map(|(s, p)| open(&s.armored, &p.identity).expect("open"))
        .collect();
    (people, sealed, records)
}

fn pick(records: &[ShareRecord], which: &[usize]) -> Vec<ShareRecord> {
    which.iter().map(|&i| records[i].clone()).collect()
}

/// Every subset of `0..n` with `k` members.
fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
    (0u32..1 << n)
        .filter(|m| m.count_ones() as usize == k)
        .map(|m| (0..n).filter(|i| m & (1 << i) != 0).collect())
        .collect()
}

#[test]
fn any_three_of_five_rebuild_the_secret() {
    let (_, sealed, records) = three_of_five();
    let check = key_check(&secret());
    for (i, (s, r)) in sealed.iter().zip(&records).enumerate() {
        assert_eq!(s.custodian, format!("custodian-{i}"));
        assert_eq!(r.custodian(), s.custodian);
        assert_eq!(usize::from(s.index), i + 1);
        assert_eq!(r.index(), s.index);
        assert_eq!((r.threshold(), r.count()), (3, 5));
        assert_eq!(r.deployment(), DEPLOYMENT);
        assert_eq!(r.key_check(), &check);
        assert_eq!(r.version(), RECORD_VERSION);
        assert_eq!(r.share().len(), 64);
        assert_eq!(
            s.digest,
            r.digest(),
            "the sealed digest is the opened record's"
        );
        assert!(s.armored.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"));
    }
    let subsets = subsets(5, 3);
    assert_eq!(subsets.len(), 10);
    for which in subsets {
        let secret_back = combine(&pick(&records, &which), DEPLOYMENT, &check)
            .unwrap_or_else(|e| panic!("{which:?}: {e}"));
        assert_eq!(secret_back.as_slice(), secret().as_slice(), "{which:?}");
    }
}

#[test]
fn more_shares_than_needed_rebuild_the_secret() {
    let (_, _, records) = three_of_five();
    let check = key_check(&secret());
    for which in [vec![0, 1, 2, 3], vec![4, 2, 0, 1], vec![0, 1, 2, 3, 4]] {
        let back = combine(&pick(&records, &which), DEPLOYMENT, &check).expect("combine");
        assert_eq!(back.as_slice(), secret().as_slice());
    }
}

#[test]
fn any_two_of_five_are_refused_with_the_count() {
    let (_, _, records) = three_of_five();
    let check = key_check(&secret());
    for which in subsets(5, 2) {
        let err = combine(&pick(&records, &which), DEPLOYMENT, &check).unwrap_err();
        assert_eq!(
            err,
            EscrowError::NotEnoughShares {
                needed: 3,
                given: 2
            }
        );
        assert_eq!(
            err.to_string(),
            "3 shares are needed to rebuild the backup key, 2 were given"
        );
    }
    assert_eq!(
        combine(&[], DEPLOYMENT, &check).unwrap_err(),
        EscrowError::NoShares
    );
}

#[test]
fn a_flipped_byte_in_a_share_value_is_caught_by_the_key_check() {
    let (_, _, records) = three_of_five();
    let check = key_check(&secret());
    let mut bad = pick(&records, &[0, 1, 2]);
    bad[1].share[17] ^= 0x01;
    let err = combine(&bad, DEPLOYMENT, &check).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the shares do not rebuild backup key {}: at least one share is wrong",
            short_check(&check)
        )
    );
    // With one share more than needed, the wrong one is named.
    let mut bad = pick(&records, &[0, 1, 2, 3]);
    bad[2].share[0] ^= 0x80;
    let err = combine(&bad, DEPLOYMENT, &check).unwrap_err();
    assert_eq!(
        err,
        EscrowError::WrongShare {
            custodian: "custodian-2".to_owned(),
            index: 3,
            expected: short_check(&check),
        }
    );
    // A share moved to another index is wrong too.
    let mut bad = pick(&records, &[0, 1, 2]);
    bad[2].index = 5;
    assert!(matches!(
        combine(&bad, DEPLOYMENT, &check),
        Err(EscrowError::WrongShares { .. })
    ));
}

#[test]
fn duplicate_shares_are_refused() {
    let (_, _, records) = three_of_five();
    let check = key_check(&secret());
    // The same share twice: same index.
    let err = combine(&pick(&records, &[0, 1, 1]), DEPLOYMENT, &check).unwrap_err();
    assert_eq!(
        err,
        EscrowError::DuplicateIndex {
            index: 2,
            first: "custodian-1".to_owned(),
            second: "custodian-1".to_owned(),
        }
    );
    assert!(err.to_string().contains("a share was given twice"), "{err}");
    // Two shares of one custodian under different indexes.
    let mut two = pick(&records, &[0, 1, 2]);
    two[2].custodian = "custodian-0".to_owned();
    assert_eq!(
        combine(&two, DEPLOYMENT, &check).unwrap_err(),
        EscrowError::DuplicateCustodian("custodian-0".to_owned())
    );
}

#[test]
fn shares_of_another_deployment_or_backup_key_are_refused() {
    let (_, _, records) = three_of_five();
    let check = key_check(&secret());
    let err = combine(&pick(&records, &[0, 1, 2]), "prod-us", &check).unwrap_err();
    assert_eq!(
        err,
        EscrowError::OtherDeployment {
            custodian: "custodian-0".to_owned(),
            found: DEPLOYMENT.to_owned(),
            expected: "prod-us".to_owned(),
        }
    );
    // Another ceremony's shares (another backup key) mixed in.
    let other_people = people(3);
    let other_secret = [7u8; 64];
    let other: Vec<ShareRecord> = split(&other_secret, DEPLOYMENT, 2, &custodians(&other_people))
        .expect("split")
        .iter()
        .zip(&other_people)
        .map(|(s, p)| open(&s.armored, &p.identity).expect("open"))
        .collect();
    let mut mixed = pick(&records, &[0, 1]);
    mixed.push(other[2].clone());
    let err = combine(&mixed, DEPLOYMENT, &check).unwrap_err();
    assert_eq!(
        err,
        EscrowError::OtherBackupKey {
            custodian: "custodian-2".to_owned(),
            found: short_check(&key_check(&other_secret)),
            expected: short_check(&check),
        }
    );
}

#[test]
fn shares_that_disagree_are_refused() {
    let (_, _, records) = three_of_five();
    let check = key_check(&secret());
    let mut bad = pick(&records, &[0, 1, 2]);
    bad[1].threshold = 2;
    assert!(matches!(
        combine(&bad, DEPLOYMENT, &check),
        Err(EscrowError::Mismatch { custodian, .. }) if custodian == "custodian-1"
    ));
    let mut bad = pick(&records, &[0, 1, 2]);
    bad[2].share = Zeroizing::new(vec![1; 63]);
    assert!(matches!(
        combine(&bad, DEPLOYMENT, &check),
        Err(EscrowError::Mismatch { custodian, .. }) if custodian == "custodian-2"
    ));
}

#[test]
fn a_share_opens_only_with_its_custodians_identity() {
    let (people, sealed, _) = three_of_five();
    assert_eq!(
        open(&sealed[0].armored, &people[1].identity).unwrap_err(),
        EscrowError::NotForIdentity
    );
    let (stranger, _) = new_identity();
    assert_eq!(
        open(&sealed[3].armored, &stranger).unwrap_err(),
        EscrowError::NotForIdentity
    );
}

#[test]
fn a_tampered_or_truncated_share_file_is_refused() {
    let (people, sealed, _) = three_of_five();
    let armored = &sealed[0].armored;
    let identity = &people[0].identity;
    // A changed character in the armored body (past the header line).
    let mut chars: Vec<char> = armored.chars().collect();
    let at = armored.find('\n').expect("a header line") + 60;
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    let tampered: String = chars.into_iter().collect();
    assert!(
        matches!(open(&tampered, identity), Err(EscrowError::Damaged(_))),
        "{:?}",
        open(&tampered, identity)
    );
    // A changed character in the payload (the second line from the end
    // of the armored body): the header opens, the payload does not.
    let lines: Vec<&str> = armored.lines().collect();
    let body_line = lines.len() - 3;
    let mut changed: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    let swapped: String = changed[body_line]
        .chars()
        .enumerate()
        .map(|(i, c)| match (i, c) {
            (10, 'A') => 'B',
            (10, _) => 'A',
            (_, c) => c,
        })
        .collect();
    changed[body_line] = swapped;
    let payload = changed.join("\n") + "\n";
    assert_ne!(payload, *armored);
    let err = open(&payload, identity).unwrap_err();
    assert!(
        matches!(&err, EscrowError::Damaged(m) if m.contains("payload")),
        "{err:?}"
    );
    // Every line kept but the last lines cut away.
    let lines: Vec<&str> = armored.lines().collect();
    let truncated = lines[..lines.len() - 2].join("\n");
    assert!(matches!(
        open(&truncated, identity),
        Err(EscrowError::Damaged(_))
    ));
    // Half the file.
    assert!(matches!(
        open(&armored[..armored.len() / 2], identity),
        Err(EscrowError::Damaged(_))
    ));
    // Not an age file at all, and an empty one.
    for junk in ["hello", "", "-----BEGIN AGE ENCRYPTED FILE-----\n"] {
        assert!(
            matches!(open(junk, identity), Err(EscrowError::Damaged(_))),
            "{junk:?}"
        );
    }
    // The intact file still opens.
    open(armored, identity).expect("intact");
}

#[test]
fn an_identity_file_must_hold_one_x25519_identity() {
    let (people, sealed, _) = three_of_five();
    let good = people[0].identity.as_str();
    assert!(good.starts_with("# keyward backup custodian identity"));
    assert!(good.contains(&format!("# public key: {}", people[0].recipient)));
    for (text, says) in [
        ("", "no age identity"),
        ("# only a comment\n", "no age identity"),
        (people[0].recipient.as_str(), "not an age X25519 identity"),
        ("AGE-SECRET-KEY-1QQQQ", "invalid"),
    ] {
        let err = open(&sealed[0].armored, text).unwrap_err();
        assert!(
            matches!(&err, EscrowError::Identity(m) if m.contains(says)),
            "{text:?}: {err}"
        );
    }
    let two = format!("{good}{}", people[1].identity.as_str());
    assert!(matches!(
        open(&sealed[0].armored, &two),
        Err(EscrowError::Identity(m)) if m.contains("more than one")
    ));
    // An error about an identity never repeats it.
    let secret_line = good
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .expect("the key line");
    let broken = format!("{secret_line}x");
    let err = open(&sealed[0].armored, &broken).unwrap_err();
    assert!(!err.to_string().contains(&secret_line[16..40]), "{err}");
}

#[test]
fn split_refuses_bad_parameters() {
    let people = people(5);
    let all = custodians(&people);
    let s = secret();
    assert_eq!(
        split(&s, DEPLOYMENT, 1, &all).unwrap_err(),
        EscrowError::ThresholdTooLow(1)
    );
    assert!(split(&s, DEPLOYMENT, 1, &all)
        .unwrap_err()
        .to_string()
        .contains("no split knowledge"));
    assert_eq!(
        split(&s, DEPLOYMENT, 0, &all).unwrap_err(),
        EscrowError::ThresholdTooLow(0)
    );
    assert_eq!(
        split(&s, DEPLOYMENT, 6, &all).unwrap_err(),
        EscrowError::ThresholdTooHigh {
            threshold: 6,
            count: 5
        }
    );
    assert_eq!(
        split(&[], DEPLOYMENT, 2, &all).unwrap_err(),
        EscrowError::SecretLength {
            len: 0,
            max: MAX_SECRET
        }
    );
    assert!(matches!(
        split(&vec![1; MAX_SECRET + 1], DEPLOYMENT, 2, &all),
        Err(EscrowError::SecretLength { .. })
    ));
    for bad in ["", "a\nb", &"x".repeat(MAX_NAME + 1)] {
        assert!(matches!(
            split(&s, bad, 2, &all),
            Err(EscrowError::Deployment(_))
        ));
    }
    let mut twice = all.clone();
    twice[3].name = twice[1].name.clone();
    assert_eq!(
        split(&s, DEPLOYMENT, 2, &twice).unwrap_err(),
        EscrowError::DuplicateCustodianName("custodian-1".to_owned())
    );
    let mut unnamed = all.clone();
    unnamed[2].name = String::new();
    assert!(matches!(
        split(&s, DEPLOYMENT, 2, &unnamed),
        Err(EscrowError::CustodianName(_))
    ));
    let mut same = all.clone();
    same[4].recipient = same[0].recipient.to_uppercase();
    assert_eq!(
        split(&s, DEPLOYMENT, 2, &same).unwrap_err(),
        EscrowError::DuplicateRecipient {
            first: "custodian-0".to_owned(),
            second: "custodian-4".to_owned(),
        }
    );
    let mut invalid = all.clone();
    invalid[1].recipient = "age1notarecipient".to_owned();
    assert!(matches!(
        split(&s, DEPLOYMENT, 2, &invalid),
        Err(EscrowError::Recipient(m)) if m.starts_with("custodian \"custodian-1\"")
    ));
    let many: Vec<Custodian> = (0..256)
        .map(|i| Custodian {
            name: format!("c{i}"),
            recipient: all[0].recipient.clone(),
        })
        .collect();
    assert_eq!(
        split(&s, DEPLOYMENT, 2, &many).unwrap_err(),
        EscrowError::TooManyCustodians(256)
    );
}

#[test]
fn a_one_byte_secret_two_of_two_round_trips() {
    let people = people(2);
    let sealed = split(b"k", DEPLOYMENT, 2, &custodians(&people)).expect("split");
    let records: Vec<ShareRecord> = sealed
        .iter()
        .zip(&people)
        .map(|(s, p)| open(&s.armored, &p.identity).expect("open"))
        .collect();
    let back = combine(&records, DEPLOYMENT, &key_check(b"k")).expect("combine");
    assert_eq!(back.as_slice(), b"k");
}

#[test]
fn recipients_are_checked() {
    let (_, recipient) = new_identity();
    assert_eq!(parse_recipient(&recipient).expect("valid"), recipient);
    assert_eq!(
        parse_recipient(&recipient.to_uppercase()).expect("valid"),
        recipient,
        "the canonical form is lower case"
    );
    let (identity, _) = new_identity();
    let secret_line = identity
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .expect("key line");
    let err = parse_recipient(secret_line).unwrap_err();
    assert!(err.to_string().contains("not a recipient"), "{err}");
    assert!(!err.to_string().contains(&secret_line[15..]), "{err}");
    for bad in [
        "",
        "ssh-ed25519 AAAA",
        "age1",
        "age1qqqq",
        &recipient[..recipient.len() - 1],
    ] {
        assert!(
            matches!(parse_recipient(bad), Err(EscrowError::Recipient(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn the_record_encoding_round_trips_and_is_strict() {
    let (_, _, records) = three_of_five();
    let r = &records[2];
    let bytes = r.encode();
    assert!(bytes.starts_with(RECORD_MAGIC));
    assert_eq!(&bytes[8..10], &RECORD_VERSION.to_le_bytes());
    let back = ShareRecord::decode(&bytes).expect("decode");
    assert_eq!(&back, r);
    assert_eq!(back.digest(), r.digest());
    // The digest is SHA-256 of the encoding.
    use sha2::{Digest, Sha256};
    assert_eq!(
        r.digest(),
        <[u8; 32]>::from(Sha256::digest(bytes.as_slice()))
    );

    let mut trailing = bytes.to_vec();
    trailing.push(0);
    assert!(matches!(
        ShareRecord::decode(&trailing),
        Err(EscrowError::Format(m)) if m.contains("1 bytes follow")
    ));
    let mut version = bytes.to_vec();
    version[8] = 2;
    assert_eq!(
        ShareRecord::decode(&version).unwrap_err(),
        EscrowError::Version {
            found: 2,
            supported: 1
        }
    );
    let mut magic = bytes.to_vec();
    magic[0] = b'X';
    assert!(matches!(
        ShareRecord::decode(&magic),
        Err(EscrowError::Format(_))
    ));
    // Every truncation is refused.
    for len in 0..bytes.len() {
        assert!(ShareRecord::decode(&bytes[..len]).is_err(), "{len}");
    }
    // Fields out of bounds: index 0, index above count, threshold 1.
    for (field, value) in [(0usize, 0u8), (0, 6), (1, 1)] {
        let mut bad = r.clone();
        match field {
            0 => bad.index = value,
            _ => bad.threshold = value,
        }
        assert!(
            matches!(
                ShareRecord::decode(&bad.encode()),
                Err(EscrowError::Format(_))
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn secrets_never_show_in_debug_output() {
    let (_, sealed, records) = three_of_five();
    let r = &records[0];
    let text = format!("{r:?}");
    assert!(text.contains("<64 bytes>"), "{text}");
    assert!(!text.contains(&format!("{:?}", r.share())), "{text}");
    assert!(!text.contains(&hex::encode(r.share())), "{text}");
    // The sealed share's Debug shows only the ciphertext.
    let text = format!("{:?}", sealed[0]);
    assert!(!text.contains(&format!("{:?}", r.share())));
}

#[test]
fn the_key_check_is_domain_separated() {
    use sha2::{Digest, Sha256};
    let s = secret();
    assert_ne!(key_check(&s), <[u8; 32]>::from(Sha256::digest(&s)));
    assert_ne!(key_check(&s), key_check(&s[..63]));
    assert_eq!(short_check(&key_check(&s)).len(), 16);
}

#[test]
fn the_largest_record_encodes_and_decodes() {
    let name = "n".repeat(MAX_NAME);
    let record = ShareRecord::new(
        &name,
        [0xee; 32],
        &name,
        255,
        255,
        255,
        Zeroizing::new(vec![0xff; MAX_SECRET]),
    )
    .expect("within bounds");
    let bytes = record.encode();
    assert_eq!(ShareRecord::decode(&bytes).expect("decode"), record);
}

#[test]
fn any_changed_byte_of_a_record_decodes_to_a_checked_record_or_an_error() {
    let (_, _, records) = three_of_five();
    let bytes = records[0].encode();
    for at in 0..bytes.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut changed = bytes.to_vec();
            changed[at] ^= flip;
            // Never a panic; what decodes is within its bounds.
            if let Ok(r) = ShareRecord::decode(&changed) {
                assert!(r.threshold() >= 2 && r.threshold() <= r.count(), "{r:?}");
                assert!(r.index() >= 1 && r.index() <= r.count(), "{r:?}");
                assert!(!r.share().is_empty() && r.share().len() <= MAX_SECRET);
            }
        }
    }
}

#[test]
fn an_identity_line_in_lower_case_opens_too() {
    let (people, sealed, records) = three_of_five();
    let lower = people[0].identity.to_lowercase();
    assert_eq!(open(&sealed[0].armored, &lower).expect("open"), records[0]);
}
