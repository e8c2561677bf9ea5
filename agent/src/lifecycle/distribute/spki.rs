//! Public keys as `SubjectPublicKeyInfo` (RFC 5280), built from and turned
//! back into the HSM's public key attributes with RustCrypto's `spki` and
//! `der`: RSA (modulus, exponent), EC P-256/384/521 (`CKA_EC_PARAMS`, and
//! `CKA_EC_POINT`'s DER OCTET STRING unwrapped), Ed25519 and Ed448.

use cryptoki_sys as ck;
use der::asn1::{AnyRef, BitStringRef, ObjectIdentifier, OctetStringRef, UintRef};
use der::{Decode, Encode, Sequence};
use keyward_policy::{Algorithm, Curve, CurveParams};
use keyward_protocol::Attribute;
use spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};

/// rsaEncryption (RFC 8017).
const RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// id-ecPublicKey (RFC 5480).
const EC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");

/// `RSAPublicKey` (RFC 8017, A.1.1).
#[derive(Sequence)]
struct RsaPublicKey<'a> {
    modulus: UintRef<'a>,
    public_exponent: UintRef<'a>,
}

/// A public key's HSM attributes, read from or for the HSM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublicParts {
    /// `CKA_MODULUS`, `CKA_PUBLIC_EXPONENT` (big-endian, unsigned).
    Rsa { modulus: Vec<u8>, exponent: Vec<u8> },
    /// The curve and the raw point (uncompressed, or the Edwards key).
    Ec { curve: Curve, point: Vec<u8> },
}

fn der_err(what: &str) -> impl Fn(der::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl PublicParts {
    /// From `CKA_EC_PARAMS` and `CKA_EC_POINT` (a DER OCTET STRING, or the
    /// raw point where a token gives that).
    pub(crate) fn from_ec(params: &[u8], point: &[u8]) -> Result<PublicParts, String> {
        let curve = Curve::from_ec_params(params)
            .ok_or_else(|| "CKA_EC_PARAMS names no curve keyward knows".to_owned())?;
        let raw = match OctetStringRef::from_der(point) {
            Ok(o) => o.as_bytes().to_vec(),
            Err(_) => point.to_vec(),
        };
        Ok(PublicParts::Ec { curve, point: raw })
    }

    /// The algorithm of the key.
    pub(crate) fn algorithm(&self) -> Option<Algorithm> {
        match self {
            PublicParts::Rsa { modulus, .. } => {
                let lead = modulus.iter().take_while(|b| **b == 0).count();
                let bits = u32::try_from((modulus.len() - lead) * 8).ok()?;
                Some(Algorithm::Rsa { min_bits: bits })
            }
            PublicParts::Ec { curve, .. } => match curve {
                Curve::P256 | Curve::P384 | Curve::P521 => Some(Algorithm::Ec(*curve)),
                Curve::Ed25519 => Some(Algorithm::Ed25519),
                Curve::Ed448 => Some(Algorithm::Ed448),
                Curve::X25519 => Some(Algorithm::X25519),
                Curve::X448 => Some(Algorithm::X448),
            },
        }
    }

    /// The DER `SubjectPublicKeyInfo`.
    pub(crate) fn to_spki(&self) -> Result<Vec<u8>, String> {
        match self {
            PublicParts::Rsa { modulus, exponent } => {
                let inner = RsaPublicKey {
                    modulus: UintRef::new(modulus).map_err(der_err("RSA modulus"))?,
                    public_exponent: UintRef::new(exponent).map_err(der_err("RSA exponent"))?,
                }
                .to_der()
                .map_err(der_err("RSAPublicKey"))?;
                encode(RSA, Some(AnyRef::NULL), &inner)
            }
            PublicParts::Ec { curve, point } => match curve {
                Curve::P256 | Curve::P384 | Curve::P521 => {
                    let oid = curve.oid();
                    let params = AnyRef::from(&oid);
                    encode(EC, Some(params), point)
                }
                // RFC 8410: the algorithm is the curve, without parameters.
                _ => encode(curve.oid(), None, point),
            },
        }
    }

    /// From a DER `SubjectPublicKeyInfo` (strict: trailing bytes refused).
    pub(crate) fn from_spki(der: &[u8]) -> Result<PublicParts, String> {
        let spki = SubjectPublicKeyInfoRef::from_der(der)
            .map_err(der_err("not a DER SubjectPublicKeyInfo"))?;
        let key = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| "the public key's BIT STRING has unused bits".to_owned())?;
        let oid = spki.algorithm.oid;
        if oid == RSA {
            let rsa = RsaPublicKey::from_der(key).map_err(der_err("RSAPublicKey"))?;
            return Ok(PublicParts::Rsa {
                modulus: rsa.modulus.as_bytes().to_vec(),
                exponent: rsa.public_exponent.as_bytes().to_vec(),
            });
        }
        let curve = if oid == EC {
            let params = spki
                .algorithm
                .parameters
                .ok_or_else(|| "an EC key without its curve".to_owned())?;
            let params = params.to_der().map_err(der_err("EC parameters"))?;
            Curve::from_ec_params(&params)
                .ok_or_else(|| "an EC key on a curve keyward does not know".to_owned())?
        } else {
            Curve::ALL
                .into_iter()
                .find(|c| c.oid() == oid)
                .ok_or_else(|| {
                    format!("a public key of algorithm {oid}, which keyward does not know")
                })?
        };
        Ok(PublicParts::Ec {
            curve,
            point: key.to_vec(),
        })
    }

    /// The attributes of a public key object holding this key (besides
    /// class, token, label, id and usage).
    pub(crate) fn attributes(&self) -> Result<Vec<Attribute>, String> {
        Ok(match self {
            PublicParts::Rsa { modulus, exponent } => vec![
                Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_RSA),
                Attribute::bytes(ck::CKA_MODULUS, modulus.clone()),
                Attribute::bytes(ck::CKA_PUBLIC_EXPONENT, exponent.clone()),
            ],
            PublicParts::Ec { curve, point } => {
                let key_type = match curve {
                    Curve::P256 | Curve::P384 | Curve::P521 => ck::CKK_EC,
                    Curve::Ed25519 | Curve::Ed448 => ck::CKK_EC_EDWARDS,
                    Curve::X25519 | Curve::X448 => ck::CKK_EC_MONTGOMERY,
                };
                let point = OctetStringRef::new(point)
                    .and_then(|o| o.to_der())
                    .map_err(der_err("CKA_EC_POINT"))?;
                vec![
                    Attribute::ulong(ck::CKA_KEY_TYPE, key_type),
                    Attribute::bytes(ck::CKA_EC_PARAMS, curve.ec_params()),
                    Attribute::bytes(ck::CKA_EC_POINT, point),
                ]
            }
        })
    }
}

fn encode(
    oid: ObjectIdentifier,
    parameters: Option<AnyRef<'_>>,
    key: &[u8],
) -> Result<Vec<u8>, String> {
    SubjectPublicKeyInfoRef {
        algorithm: AlgorithmIdentifierRef { oid, parameters },
        subject_public_key: BitStringRef::from_bytes(key).map_err(der_err("public key"))?,
    }
    .to_der()
    .map_err(der_err("SubjectPublicKeyInfo"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An EC P-256 key from p256 (RustCrypto): the SPKI built here is the
    /// one p256 writes, and reads back to the same point.
    #[test]
    fn an_ec_key_is_the_spki_p256_writes() {
        use p256::pkcs8::EncodePublicKey;
        let secret = p256::SecretKey::from_slice(&[7u8; 32]).expect("scalar");
        let public = secret.public_key();
        let theirs = public.to_public_key_der().expect("der");
        let point = public.to_sec1_bytes().to_vec();
        let ec_point = OctetStringRef::new(&point).unwrap().to_der().unwrap();
        let parts = PublicParts::from_ec(&Curve::P256.ec_params(), &ec_point).unwrap();
        assert_eq!(parts.to_spki().unwrap(), theirs.as_bytes());
        assert_eq!(PublicParts::from_spki(theirs.as_bytes()).unwrap(), parts);
        assert_eq!(parts.algorithm(), Some(Algorithm::Ec(Curve::P256)));
    }

    /// An Ed25519 key from ed25519-dalek: RFC 8410's SPKI, as it writes it.
    #[test]
    fn an_ed25519_key_is_the_spki_ed25519_dalek_writes() {
        use ed25519_dalek::pkcs8::EncodePublicKey;
        let key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]).verifying_key();
        let theirs = key.to_public_key_der().expect("der");
        let ec_point = OctetStringRef::new(key.as_bytes())
            .unwrap()
            .to_der()
            .unwrap();
        let parts = PublicParts::from_ec(&Curve::Ed25519.ec_params(), &ec_point).unwrap();
        assert_eq!(parts.to_spki().unwrap(), theirs.as_bytes());
        assert_eq!(PublicParts::from_spki(theirs.as_bytes()).unwrap(), parts);
        assert_eq!(parts.algorithm(), Some(Algorithm::Ed25519));
    }

    #[test]
    fn an_rsa_key_round_trips_and_counts_its_bits() {
        let mut modulus = vec![0xc1u8; 256];
        modulus[255] = 0x01;
        let parts = PublicParts::Rsa {
            modulus: modulus.clone(),
            exponent: vec![1, 0, 1],
        };
        let der = parts.to_spki().unwrap();
        assert_eq!(PublicParts::from_spki(&der).unwrap(), parts);
        assert_eq!(parts.algorithm(), Some(Algorithm::Rsa { min_bits: 2048 }));
    }

    #[test]
    fn trailing_bytes_and_truncation_are_refused() {
        let parts = PublicParts::Rsa {
            modulus: vec![0xc1u8; 256],
            exponent: vec![1, 0, 1],
        };
        let mut der = parts.to_spki().unwrap();
        der.push(0);
        assert!(PublicParts::from_spki(&der).is_err());
        der.truncate(der.len() - 10);
        assert!(PublicParts::from_spki(&der).is_err());
        assert!(PublicParts::from_spki(b"-----BEGIN").is_err());
    }
}
