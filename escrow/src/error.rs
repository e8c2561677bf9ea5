//! [`EscrowError`]: every refusal of the escrow, each saying what is wrong
//! and what to do, never a secret, a share value or an identity.

use thiserror::Error;

/// Why a split, an opening or a combination was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EscrowError {
    /// The secret to split is empty or longer than [`MAX_SECRET`](crate::MAX_SECRET).
    #[error("the secret to split is {len} bytes: it must be 1 to {max} bytes")]
    SecretLength {
        /// Its length.
        len: usize,
        /// The largest secret split.
        max: usize,
    },
    /// A threshold under 2: every share alone would be the secret.
    #[error(
        "a threshold of {0} is no split knowledge: one share alone would rebuild the backup key; \
         at least 2 custodians must be needed"
    )]
    ThresholdTooLow(u8),
    /// More shares needed than there are custodians.
    #[error("a threshold of {threshold} needs at least {threshold} custodians, not {count}")]
    ThresholdTooHigh {
        /// The threshold asked for.
        threshold: u8,
        /// How many custodians there are.
        count: usize,
    },
    /// More custodians than shares can be made (255).
    #[error("{0} custodians: at most 255 shares can be made")]
    TooManyCustodians(usize),
    /// The deployment's name is empty, too long or not printable.
    #[error("deployment name: {0}")]
    Deployment(String),
    /// A custodian's name is empty, too long or not printable.
    #[error("custodian name: {0}")]
    CustodianName(String),
    /// Two custodians have the same name.
    #[error("custodian \"{0}\" is listed twice: each custodian holds one share")]
    DuplicateCustodianName(String),
    /// A recipient is not an age X25519 recipient.
    #[error("{0}")]
    Recipient(String),
    /// Two custodians have the same recipient.
    #[error(
        "custodians \"{first}\" and \"{second}\" have the same recipient: each custodian needs an identity of their own"
    )]
    DuplicateRecipient {
        /// The first custodian with it.
        first: String,
        /// The second.
        second: String,
    },
    /// Sealing a share failed.
    #[error("sealing the share of custodian \"{custodian}\" failed: {reason}")]
    Seal {
        /// The custodian.
        custodian: String,
        /// Why.
        reason: String,
    },
    /// The identity text is not one age X25519 identity.
    #[error("identity: {0}")]
    Identity(String),
    /// The share is sealed to another identity.
    #[error(
        "this share is not sealed to this identity: it is another custodian's share, or the identity file is not the one made for this custodian"
    )]
    NotForIdentity,
    /// The share file is not a complete, intact age file.
    #[error("the share file is damaged, truncated or not an armored age file: {0}")]
    Damaged(String),
    /// The opened share's record is malformed.
    #[error("the share record is malformed: {0}")]
    Format(String),
    /// The opened share's record has a version this keyward does not read.
    #[error("the share record has format version {found}; this keyward reads version {supported}")]
    Version {
        /// The record's version.
        found: u16,
        /// The version read.
        supported: u16,
    },
    /// No share was given.
    #[error("no share was given")]
    NoShares,
    /// Fewer shares than the threshold.
    #[error("{needed} shares are needed to rebuild the backup key, {given} were given")]
    NotEnoughShares {
        /// The threshold.
        needed: u8,
        /// How many distinct shares were given.
        given: usize,
    },
    /// Two shares with the same index.
    #[error(
        "the shares of \"{first}\" and \"{second}\" have the same index {index}: a share was given twice"
    )]
    DuplicateIndex {
        /// The index.
        index: u8,
        /// The first share's custodian.
        first: String,
        /// The second share's custodian.
        second: String,
    },
    /// Two shares of the same custodian.
    #[error("two shares of custodian \"{0}\" were given: each custodian holds one share")]
    DuplicateCustodian(String),
    /// A share of another deployment.
    #[error("the share of \"{custodian}\" belongs to deployment \"{found}\", not \"{expected}\"")]
    OtherDeployment {
        /// The share's custodian.
        custodian: String,
        /// The share's deployment.
        found: String,
        /// The deployment restored.
        expected: String,
    },
    /// A share of another backup key.
    #[error(
        "the share of \"{custodian}\" belongs to backup key {found}, not backup key {expected}: it is from another ceremony"
    )]
    OtherBackupKey {
        /// The share's custodian.
        custodian: String,
        /// The short check value of the share's backup key.
        found: String,
        /// The short check value expected.
        expected: String,
    },
    /// Shares that disagree on the threshold, the number of shares or the
    /// share length.
    #[error("the share of \"{custodian}\" does not match the others: {what}")]
    Mismatch {
        /// The custodian of the share that differs from the first.
        custodian: String,
        /// What differs.
        what: String,
    },
    /// The shares rebuild a secret whose check value differs.
    #[error("the shares do not rebuild backup key {expected}: at least one share is wrong")]
    WrongShares {
        /// The short check value expected.
        expected: String,
    },
    /// The shares rebuild the secret without one of them: that one is wrong.
    #[error(
        "the share of \"{custodian}\" (index {index}) is wrong: the other shares rebuild backup key {expected} without it"
    )]
    WrongShare {
        /// The wrong share's custodian.
        custodian: String,
        /// Its index.
        index: u8,
        /// The short check value expected.
        expected: String,
    },
}
