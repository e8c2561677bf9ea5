//! What a key is for, and the operations applications do with keys.

use crate::names::named;

/// What a key is for. A key has exactly one purpose.
///
/// Text form: `signing`, `encryption`, `wrapping`, `derivation`, `mac`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Purpose {
    /// Digital signatures (asymmetric keys).
    Signing,
    /// Encryption of data.
    Encryption,
    /// Encryption of other keys.
    Wrapping,
    /// Key derivation and key agreement.
    Derivation,
    /// Message authentication codes (secret keys).
    Mac,
}

named!(Purpose, "purpose", [
    Signing => "signing",
    Encryption => "encryption",
    Wrapping => "wrapping",
    Derivation => "derivation",
    Mac => "mac",
]);

impl Purpose {
    /// The operations a key of this purpose can be used for.
    ///
    /// `digest` (`C_DigestKey`, which feeds a secret key's value into a
    /// digest) belongs to MAC keys only: it is how some protocols compute
    /// MACs, and no other purpose has a reason to hash its key.
    pub fn operations(self) -> &'static [Operation] {
        match self {
            Purpose::Signing => &[Operation::Sign, Operation::Verify],
            Purpose::Encryption => &[Operation::Encrypt, Operation::Decrypt],
            Purpose::Wrapping => &[Operation::Wrap, Operation::Unwrap],
            Purpose::Derivation => &[Operation::Derive],
            Purpose::Mac => &[Operation::Sign, Operation::Verify, Operation::Digest],
        }
    }

    /// Whether `op` fits this purpose.
    pub fn allows(self, op: Operation) -> bool {
        self.operations().contains(&op)
    }
}

/// An operation with a key, as granted to applications and checked on use.
///
/// Text form: `sign`, `verify`, `encrypt`, `decrypt`, `wrap`, `unwrap`,
/// `derive`, `digest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// `C_Sign*` (signatures and MACs).
    Sign,
    /// `C_Verify*`.
    Verify,
    /// `C_Encrypt*`.
    Encrypt,
    /// `C_Decrypt*`.
    Decrypt,
    /// `C_WrapKey` with this key as the wrapping key.
    Wrap,
    /// `C_UnwrapKey` with this key as the unwrapping key.
    Unwrap,
    /// `C_DeriveKey` with this key as the base key.
    Derive,
    /// `C_DigestKey`.
    Digest,
}

named!(Operation, "operation", [
    Sign => "sign",
    Verify => "verify",
    Encrypt => "encrypt",
    Decrypt => "decrypt",
    Wrap => "wrap",
    Unwrap => "unwrap",
    Derive => "derive",
    Digest => "digest",
]);

impl Operation {
    /// A protect operation applies the key to new data: sign, encrypt,
    /// wrap, derive, and digest (which produces new output from the key's
    /// value). Only an active key protects.
    pub fn is_protect(self) -> bool {
        !self.is_process()
    }

    /// A process operation applies the key to data protected earlier:
    /// verify, decrypt, unwrap. A deactivated key still processes until its
    /// process period ends.
    pub fn is_process(self) -> bool {
        matches!(
            self,
            Operation::Verify | Operation::Decrypt | Operation::Unwrap
        )
    }
}
