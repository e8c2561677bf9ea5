//! What identifies a key object beyond its `CKA_ID`: a SHA-256 fingerprint
//! of its public value or key check value, read from the HSM, and the same
//! fingerprint of the public key in a certificate. Managed key versions and
//! the audit key are recognised by it ([`crate::keys`]); unmanaged public
//! keys are told apart by it ([`crate::objects`]).

use cryptoki_sys as ck;
use keyward_protocol::{AttrResult, AttrValue, Value};
use sha2::{Digest, Sha256};

use crate::backend::{Backend, BackendObject, BackendSession};

/// The value of attribute `i` of `r` as bytes, when it has one.
pub(crate) fn bytes_at(r: &[AttrResult], i: usize) -> Option<&[u8]> {
    match r.get(i) {
        Some(AttrResult::Value(AttrValue::Leaf(Value::Bytes(b)))) if !b.is_empty() => Some(b),
        _ => None,
    }
}

/// The value of attribute `i` of `r` as a number.
pub(crate) fn ulong_at(r: &[AttrResult], i: usize) -> Option<u64> {
    match r.get(i) {
        Some(AttrResult::Value(AttrValue::Leaf(Value::Ulong(u)))) => Some(*u),
        _ => None,
    }
}

/// A big-endian integer without its leading zero bytes.
fn unpadded(b: &[u8]) -> &[u8] {
    &b[b.iter().take_while(|x| **x == 0).count()..]
}

/// What identifies a key object beyond its `CKA_ID`, read from the HSM:
/// SHA-256 over a domain string, the key type and
/// - a key pair's public value, the same on both halves where the HSM shows
///   it: `CKA_EC_PARAMS` and `CKA_EC_POINT` (EC, EdDSA, Montgomery keys:
///   public keys only, the HSM does not show a private key's point), or
///   `CKA_MODULUS` and `CKA_PUBLIC_EXPONENT` (RSA, both halves);
/// - a secret key's `CKA_VALUE_LEN` and `CKA_CHECK_VALUE` (the key check
///   value the HSM computes: SoftHSM2 gives the first 3 bytes of a zero
///   block encrypted under an AES key, of SHA-1 of the value for HMAC
///   keys). Computing our own check value would need the key to encrypt,
///   which a MAC or wrapping key must not.
///
/// `None` when the object shows none of these (a private EC key, a backend
/// without check values): it cannot be told apart by its attributes.
pub fn fingerprint(
    backend: &dyn Backend,
    session: BackendSession,
    object: BackendObject,
) -> Option<[u8; 32]> {
    let head = backend
        .get_attributes(session, object, &[ck::CKA_CLASS, ck::CKA_KEY_TYPE])
        .ok()?;
    let (class, key_type) = (ulong_at(&head, 0)?, ulong_at(&head, 1)?);
    let mut h = Sha256::new();
    h.update(b"keyward key fingerprint 1\0");
    let mut part = |b: &[u8]| {
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    };
    match (class, key_type) {
        (ck::CKO_SECRET_KEY, _) => {
            let r = backend
                .get_attributes(session, object, &[ck::CKA_VALUE_LEN, ck::CKA_CHECK_VALUE])
                .ok()?;
            part(b"secret");
            part(&key_type.to_be_bytes());
            part(&ulong_at(&r, 0).unwrap_or(0).to_be_bytes());
            part(bytes_at(&r, 1)?);
        }
        (ck::CKO_PUBLIC_KEY | ck::CKO_PRIVATE_KEY, ck::CKK_RSA) => {
            let r = backend
                .get_attributes(session, object, &[ck::CKA_MODULUS, ck::CKA_PUBLIC_EXPONENT])
                .ok()?;
            part(b"pair");
            part(&key_type.to_be_bytes());
            part(unpadded(bytes_at(&r, 0)?));
            part(unpadded(bytes_at(&r, 1)?));
        }
        (ck::CKO_PUBLIC_KEY | ck::CKO_PRIVATE_KEY, _) => {
            let r = backend
                .get_attributes(session, object, &[ck::CKA_EC_PARAMS, ck::CKA_EC_POINT])
                .ok()?;
            part(b"pair");
            part(&key_type.to_be_bytes());
            part(bytes_at(&r, 0)?);
            part(bytes_at(&r, 1)?);
        }
        _ => return None,
    }
    Some(h.finalize().into())
}

/// The fingerprint (as [`fingerprint`] makes it) of the public key in an
/// X.509 certificate (DER): EC and RSA keys. `None` for anything else. A
/// certificate whose key is a managed key's is that key's certificate, and
/// may carry its name and `CKA_ID`.
pub fn certificate_fingerprint(der: &[u8]) -> Option<[u8; 32]> {
    use const_oid::db::rfc5912;
    use x509_cert::der::{Decode, Encode};
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let spki = &cert.tbs_certificate.subject_public_key_info;
    let key = spki.subject_public_key.as_bytes()?;
    let mut h = Sha256::new();
    h.update(b"keyward key fingerprint 1\0");
    let mut part = |b: &[u8]| {
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    };
    let oid = spki.algorithm.oid;
    if oid == rfc5912::ID_EC_PUBLIC_KEY {
        // id-ecPublicKey: CKA_EC_PARAMS is the curve's DER, CKA_EC_POINT
        // the point wrapped in an OCTET STRING.
        let params = spki.algorithm.parameters.as_ref()?.to_der().ok()?;
        let point = x509_cert::der::asn1::OctetStringRef::new(key)
            .ok()?
            .to_der()
            .ok()?;
        part(b"pair");
        part(&ck::CKK_EC.to_be_bytes());
        part(&params);
        part(&point);
    } else if oid == rfc5912::RSA_ENCRYPTION {
        // rsaEncryption: RSAPublicKey ::= SEQUENCE { modulus, exponent }.
        let (modulus, exponent) = rsa_public_key(key)?;
        part(b"pair");
        part(&ck::CKK_RSA.to_be_bytes());
        part(unpadded(&modulus));
        part(unpadded(&exponent));
    } else {
        return None;
    }
    Some(h.finalize().into())
}

/// The modulus and public exponent of a DER `RSAPublicKey` (RFC 8017:
/// `SEQUENCE { modulus INTEGER, publicExponent INTEGER }`), big-endian
/// without sign padding; `None` for anything else, trailing bytes included.
fn rsa_public_key(der: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    use x509_cert::der::asn1::UintRef;
    use x509_cert::der::{Decode, Reader, SliceReader};
    let mut r = SliceReader::new(der).ok()?;
    let pair = r
        .sequence(|seq| {
            let modulus = UintRef::decode(seq)?;
            let exponent = UintRef::decode(seq)?;
            Ok((modulus.as_bytes().to_vec(), exponent.as_bytes().to_vec()))
        })
        .ok()?;
    r.finish(pair).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_public_keys_are_read_by_the_der_crate_within_their_bounds() {
        // SEQUENCE { INTEGER 0x00c5 (sign padding), INTEGER 3 }
        let good = [0x30, 0x07, 0x02, 0x02, 0x00, 0xc5, 0x02, 0x01, 0x03];
        assert_eq!(rsa_public_key(&good), Some((vec![0xc5], vec![3])));
        let mut trailing = good.to_vec();
        trailing.push(0);
        assert_eq!(rsa_public_key(&trailing), None);
        // Wrong tag, truncated, an absurd long-form length, empty.
        assert_eq!(rsa_public_key(&[0x31, 0x03, 0x02, 0x01, 0x05]), None);
        assert_eq!(rsa_public_key(&good[..6]), None);
        assert_eq!(rsa_public_key(&[0x30, 0x85, 1, 2, 3, 4, 5]), None);
        assert_eq!(rsa_public_key(&[]), None);
    }

    #[test]
    fn a_certificate_that_does_not_parse_has_no_fingerprint() {
        assert_eq!(certificate_fingerprint(b""), None);
        assert_eq!(certificate_fingerprint(b"not a certificate"), None);
        assert_eq!(
            certificate_fingerprint(&[0x30, 0x82, 0xff, 0xff, 0x30]),
            None
        );
        assert_eq!(unpadded(&[0, 0, 1, 0]), &[1, 0]);
        assert_eq!(unpadded(&[0, 0]), &[] as &[u8]);
    }
}
