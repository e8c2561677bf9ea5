//! Key algorithms (`"rsa:3072"`, `"ec:p256"`, ...) and named curves.

use std::fmt;
use std::str::FromStr;

use crate::names::named;
use crate::{ParseError, Purpose};

/// A named curve.
///
/// Text form: `p256`, `p384`, `p521`, `ed25519`, `ed448`, `x25519`, `x448`.
/// Its object identifier and `CKA_EC_PARAMS` encoding are the policy's
/// (`keyward_policy::CurveParams`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Curve {
    /// NIST P-256 (secp256r1, prime256v1).
    P256,
    /// NIST P-384 (secp384r1).
    P384,
    /// NIST P-521 (secp521r1).
    P521,
    /// Ed25519 (EdDSA).
    Ed25519,
    /// Ed448 (EdDSA).
    Ed448,
    /// X25519 (ECDH on Curve25519).
    X25519,
    /// X448 (ECDH on Curve448).
    X448,
}

named!(Curve, "curve", [
    P256 => "p256",
    P384 => "p384",
    P521 => "p521",
    Ed25519 => "ed25519",
    Ed448 => "ed448",
    X25519 => "x25519",
    X448 => "x448",
]);

/// A key's algorithm. In a key class, sizes are minimums in bits (see
/// [`Algorithm::covers`]); in a key's record, its size.
///
/// Text form: `rsa:N`, `ec:p256`, `ec:p384`, `ec:p521`, `ed25519`, `ed448`,
/// `x25519`, `x448`, `aes:N`, `generic:N`, `hmac:N` (see [`ALGORITHM_FORMS`]);
/// serde writes that text in every format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `rsa:N`: RSA with a modulus of at least N bits.
    Rsa {
        /// Smallest modulus allowed.
        min_bits: u32,
    },
    /// `ec:p256`, `ec:p384`, `ec:p521`: ECDSA / ECDH on a NIST curve.
    Ec(Curve),
    /// `ed25519`.
    Ed25519,
    /// `ed448`.
    Ed448,
    /// `x25519`.
    X25519,
    /// `x448`.
    X448,
    /// `aes:N` (N = 128, 192 or 256): AES keys of at least N bits.
    Aes {
        /// Smallest key allowed.
        min_bits: u32,
    },
    /// `generic:N`: generic secrets (`CKM_GENERIC_SECRET_KEY_GEN`) of at
    /// least N bits.
    Generic {
        /// Smallest key allowed.
        min_bits: u32,
    },
    /// `hmac:N`: HMAC keys of at least N bits, made by
    /// `CKM_GENERIC_SECRET_KEY_GEN` or a `CKM_SHA*_KEY_GEN`.
    Hmac {
        /// Smallest key allowed.
        min_bits: u32,
    },
}

/// The text forms of [`Algorithm`], for messages.
pub const ALGORITHM_FORMS: &str =
    "rsa:N, ec:p256, ec:p384, ec:p521, ed25519, ed448, x25519, x448, aes:N, generic:N, hmac:N";

impl Algorithm {
    /// Parses the text form (as [`FromStr`] does).
    pub fn parse(text: &str) -> Result<Algorithm, ParseError> {
        let bits = |n: &str, min: u32, max: u32| -> Result<u32, ParseError> {
            match n.parse::<u32>() {
                Ok(b) if (min..=max).contains(&b) && b % 8 == 0 => Ok(b),
                _ => Err(ParseError::new(format!(
                    "\"{text}\": the size must be a number of bits from {min} to {max}, a multiple of 8"
                ))),
            }
        };
        let alg = match text.split_once(':') {
            None => match text {
                "ed25519" => Algorithm::Ed25519,
                "ed448" => Algorithm::Ed448,
                "x25519" => Algorithm::X25519,
                "x448" => Algorithm::X448,
                _ => return Err(unknown(text)),
            },
            Some(("rsa", n)) => Algorithm::Rsa {
                min_bits: bits(n, 1024, 16384)?,
            },
            Some(("aes", n)) => match n {
                "128" | "192" | "256" => Algorithm::Aes {
                    min_bits: bits(n, 128, 256)?,
                },
                _ => {
                    return Err(ParseError::new(format!(
                        "\"{text}\": AES sizes are 128, 192 and 256"
                    )))
                }
            },
            Some(("generic", n)) => Algorithm::Generic {
                min_bits: bits(n, 8, 65536)?,
            },
            Some(("hmac", n)) => Algorithm::Hmac {
                min_bits: bits(n, 8, 65536)?,
            },
            Some(("ec", curve)) => match curve {
                "p256" => Algorithm::Ec(Curve::P256),
                "p384" => Algorithm::Ec(Curve::P384),
                "p521" => Algorithm::Ec(Curve::P521),
                _ => {
                    return Err(ParseError::new(format!(
                        "\"{text}\": EC curves are p256, p384 and p521"
                    )))
                }
            },
            Some(_) => return Err(unknown(text)),
        };
        Ok(alg)
    }

    /// Whether a class entry `self` allows a key of `wanted`: the same kind
    /// (and curve), at least the entry's size (`rsa:3072` allows rsa:4096).
    pub fn covers(self, wanted: Algorithm) -> bool {
        use Algorithm::*;
        match (self, wanted) {
            (Rsa { min_bits: m }, Rsa { min_bits: w })
            | (Aes { min_bits: m }, Aes { min_bits: w })
            | (Generic { min_bits: m }, Generic { min_bits: w })
            | (Hmac { min_bits: m }, Hmac { min_bits: w }) => w >= m,
            (a, b) => a == b,
        }
    }

    /// Whether the algorithm can serve `purpose`. Signing: RSA, EC,
    /// Ed25519, Ed448; encryption: RSA, AES; wrapping: AES, RSA (RSA-OAEP
    /// wrapping, e.g. to a custodian's key); derivation: EC, X25519, X448;
    /// MAC: generic, HMAC, AES (CMAC).
    pub fn fits(self, purpose: Purpose) -> bool {
        use Algorithm::*;
        match purpose {
            Purpose::Signing => matches!(self, Rsa { .. } | Ec(_) | Ed25519 | Ed448),
            Purpose::Encryption | Purpose::Wrapping => matches!(self, Rsa { .. } | Aes { .. }),
            Purpose::Derivation => matches!(self, Ec(_) | X25519 | X448),
            Purpose::Mac => matches!(self, Generic { .. } | Hmac { .. } | Aes { .. }),
        }
    }
}

fn unknown(text: &str) -> ParseError {
    ParseError::new(format!(
        "\"{text}\" is not an algorithm: expected one of {ALGORITHM_FORMS}"
    ))
}

impl FromStr for Algorithm {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Algorithm, ParseError> {
        Algorithm::parse(text)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Algorithm::Rsa { min_bits } => write!(f, "rsa:{min_bits}"),
            Algorithm::Ec(curve) => write!(f, "ec:{curve}"),
            Algorithm::Ed25519 => f.write_str("ed25519"),
            Algorithm::Ed448 => f.write_str("ed448"),
            Algorithm::X25519 => f.write_str("x25519"),
            Algorithm::X448 => f.write_str("x448"),
            Algorithm::Aes { min_bits } => write!(f, "aes:{min_bits}"),
            Algorithm::Generic { min_bits } => write!(f, "generic:{min_bits}"),
            Algorithm::Hmac { min_bits } => write!(f, "hmac:{min_bits}"),
        }
    }
}

impl serde::Serialize for Algorithm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Algorithm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Algorithm, D::Error> {
        use serde::de::Error as _;
        let text = String::deserialize(d)?;
        text.parse().map_err(D::Error::custom)
    }
}
