//! Key algorithms as a class allows them (`"rsa:3072"`, `"ec:p256"`, ...),
//! and the curves named by `CKA_EC_PARAMS`.

use std::fmt;

use der::asn1::ObjectIdentifier;
use der::{Decode, Encode};

use crate::lifecycle::Purpose;

/// A named curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

impl Curve {
    const ALL: [Curve; 7] = [
        Curve::P256,
        Curve::P384,
        Curve::P521,
        Curve::Ed25519,
        Curve::Ed448,
        Curve::X25519,
        Curve::X448,
    ];

    /// The curve's object identifier, from const-oid's database.
    pub fn oid(self) -> ObjectIdentifier {
        use const_oid::db::{rfc5912, rfc8410};
        match self {
            Curve::P256 => rfc5912::SECP_256_R_1,
            Curve::P384 => rfc5912::SECP_384_R_1,
            Curve::P521 => rfc5912::SECP_521_R_1,
            Curve::Ed25519 => rfc8410::ID_ED_25519,
            Curve::Ed448 => rfc8410::ID_ED_448,
            Curve::X25519 => rfc8410::ID_X_25519,
            Curve::X448 => rfc8410::ID_X_448,
        }
    }

    /// The DER of the curve's object identifier, as in `CKA_EC_PARAMS`.
    pub fn ec_params(self) -> Vec<u8> {
        // The database's identifiers are valid and short: encoding them
        // does not fail (an empty value would be refused by the HSM).
        self.oid().to_der().unwrap_or_default()
    }

    /// The name PKCS#11 3.0 allows in a DER PrintableString instead of the
    /// OID, for the Edwards and Montgomery curves.
    fn printable_name(self) -> Option<&'static str> {
        match self {
            Curve::Ed25519 => Some("edwards25519"),
            Curve::Ed448 => Some("edwards448"),
            Curve::X25519 => Some("curve25519"),
            Curve::X448 => Some("curve448"),
            Curve::P256 | Curve::P384 | Curve::P521 => None,
        }
    }

    /// The curve named by a `CKA_EC_PARAMS` value: an OID, or for the
    /// Edwards and Montgomery curves also a PrintableString.
    pub fn from_ec_params(der: &[u8]) -> Option<Curve> {
        use der::asn1::PrintableStringRef;
        if let Ok(oid) = ObjectIdentifier::from_der(der) {
            return Curve::ALL.into_iter().find(|curve| curve.oid() == oid);
        }
        let name = PrintableStringRef::from_der(der).ok()?;
        Curve::ALL
            .into_iter()
            .find(|curve| curve.printable_name() == Some(name.as_str()))
    }

    /// The curve's name in messages and in the policy file.
    pub fn name(self) -> &'static str {
        match self {
            Curve::P256 => "p256",
            Curve::P384 => "p384",
            Curve::P521 => "p521",
            Curve::Ed25519 => "ed25519",
            Curve::Ed448 => "ed448",
            Curve::X25519 => "x25519",
            Curve::X448 => "x448",
        }
    }
}

impl fmt::Display for Curve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An algorithm a key class allows. Sizes are minimums in bits.
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

/// What the policy file accepts, for messages.
pub(crate) const ALGORITHM_FORMS: &str =
    "rsa:N, ec:p256, ec:p384, ec:p521, ed25519, ed448, x25519, x448, aes:N, generic:N, hmac:N";

impl Algorithm {
    /// Parses the policy file's form.
    pub fn parse(text: &str) -> Result<Algorithm, String> {
        let bits = |n: &str, min: u32, max: u32| -> Result<u32, String> {
            match n.parse::<u32>() {
                Ok(b) if (min..=max).contains(&b) && b % 8 == 0 => Ok(b),
                _ => Err(format!(
                    "\"{text}\": the size must be a number of bits from {min} to {max}, a multiple of 8"
                )),
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
                _ => return Err(format!("\"{text}\": AES sizes are 128, 192 and 256")),
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
                _ => return Err(format!("\"{text}\": EC curves are p256, p384 and p521")),
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

fn unknown(text: &str) -> String {
    format!("\"{text}\" is not an algorithm: expected one of {ALGORITHM_FORMS}")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_minimums() {
        let p = |t: &str| Algorithm::parse(t).unwrap();
        assert!(p("rsa:3072").covers(p("rsa:4096")));
        assert!(!p("rsa:3072").covers(p("rsa:2048")));
        assert!(p("aes:128").covers(p("aes:256")));
        assert!(!p("ec:p256").covers(p("ec:p384")));
        assert!(p("ec:p256").covers(p("ec:p256")));
        assert!(!p("aes:128").covers(p("hmac:256")));
    }

    #[test]
    fn parse_and_display_round_trip() {
        for text in [
            "rsa:2048",
            "rsa:3072",
            "ec:p256",
            "ec:p384",
            "ec:p521",
            "ed25519",
            "ed448",
            "x25519",
            "x448",
            "aes:128",
            "aes:256",
            "generic:256",
            "hmac:256",
        ] {
            assert_eq!(Algorithm::parse(text).unwrap().to_string(), text);
        }
        for bad in [
            "rsa",
            "rsa:",
            "rsa:512",
            "rsa:3071",
            "rsa:x",
            "aes:64",
            "aes:100",
            "ec:secp256k1",
            "ec",
            "ed25520",
            "des3:168",
            "generic:0",
            "RSA:2048",
        ] {
            assert!(Algorithm::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn algorithms_fit_purposes() {
        let fits = |a: &str, p| Algorithm::parse(a).unwrap().fits(p);
        assert!(fits("ec:p256", Purpose::Signing));
        assert!(fits("ed25519", Purpose::Signing));
        assert!(!fits("aes:128", Purpose::Signing));
        assert!(fits("rsa:2048", Purpose::Encryption));
        assert!(!fits("ec:p256", Purpose::Encryption));
        assert!(fits("aes:256", Purpose::Wrapping));
        assert!(!fits("hmac:256", Purpose::Wrapping));
        assert!(fits("ec:p384", Purpose::Derivation));
        assert!(fits("x25519", Purpose::Derivation));
        assert!(!fits("rsa:2048", Purpose::Derivation));
        assert!(fits("hmac:256", Purpose::Mac));
        assert!(fits("aes:128", Purpose::Mac));
        assert!(!fits("ed25519", Purpose::Mac));
    }

    #[test]
    fn curves_from_ec_params() {
        let p256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        assert_eq!(Curve::from_ec_params(&p256), Some(Curve::P256));
        assert_eq!(
            Curve::from_ec_params(&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22]),
            Some(Curve::P384)
        );
        assert_eq!(
            Curve::from_ec_params(&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23]),
            Some(Curve::P521)
        );
        assert_eq!(
            Curve::from_ec_params(&[0x06, 0x03, 0x2b, 0x65, 0x70]),
            Some(Curve::Ed25519)
        );
        let mut printable = vec![0x13, 12];
        printable.extend_from_slice(b"edwards25519");
        assert_eq!(Curve::from_ec_params(&printable), Some(Curve::Ed25519));
        // secp256k1
        assert_eq!(
            Curve::from_ec_params(&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a]),
            None
        );
        assert_eq!(Curve::from_ec_params(&[]), None);
        assert_eq!(Curve::from_ec_params(&[0x13, 3, b'e', b'd']), None);
        // Trailing bytes, a wrong length, another tag: no curve.
        let mut long = p256.to_vec();
        long.push(0);
        assert_eq!(Curve::from_ec_params(&long), None);
        assert_eq!(Curve::from_ec_params(&p256[..9]), None);
        let mut tagged = p256;
        tagged[0] = 0x04;
        assert_eq!(Curve::from_ec_params(&tagged), None);
        let mut printable = vec![0x13, 12];
        printable.extend_from_slice(b"edwards25519");
        printable.push(b'x');
        assert_eq!(Curve::from_ec_params(&printable), None);
    }

    #[test]
    fn every_curve_reads_back_from_its_ec_params() {
        for curve in Curve::ALL {
            let der = curve.ec_params();
            assert_eq!(der[0], 0x06, "{curve:?}");
            assert_eq!(Curve::from_ec_params(&der), Some(curve));
        }
        // The well-known encodings.
        assert_eq!(
            Curve::P256.ec_params(),
            [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
        );
        assert_eq!(Curve::P384.oid().to_string(), "1.3.132.0.34");
        assert_eq!(Curve::P521.oid().to_string(), "1.3.132.0.35");
        assert_eq!(Curve::Ed25519.ec_params(), [0x06, 0x03, 0x2b, 0x65, 0x70]);
        assert_eq!(Curve::Ed448.oid().to_string(), "1.3.101.113");
        assert_eq!(Curve::X25519.oid().to_string(), "1.3.101.110");
        assert_eq!(Curve::X448.oid().to_string(), "1.3.101.111");
    }
}
