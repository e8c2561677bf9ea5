//! The curves named by `CKA_EC_PARAMS`: a [`Curve`]'s object identifier
//! (from const-oid's database) and its DER. The curve and algorithm types
//! are keyward-domain's.

use der::asn1::ObjectIdentifier;
use der::{Decode, Encode};
use keyward_domain::Curve;

/// A curve's `CKA_EC_PARAMS`: its object identifier in DER, or for the
/// Edwards and Montgomery curves also their PrintableString name.
pub trait CurveParams: Sized {
    /// The curve's object identifier, from const-oid's database.
    fn oid(self) -> ObjectIdentifier;

    /// The DER of the curve's object identifier, as in `CKA_EC_PARAMS`.
    fn ec_params(self) -> Vec<u8>;

    /// The curve named by a `CKA_EC_PARAMS` value: an OID, or for the
    /// Edwards and Montgomery curves also a PrintableString.
    fn from_ec_params(der: &[u8]) -> Option<Self>;
}

impl CurveParams for Curve {
    fn oid(self) -> ObjectIdentifier {
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

    fn ec_params(self) -> Vec<u8> {
        // The database's identifiers are valid and short: encoding them
        // does not fail (an empty value would be refused by the HSM).
        self.oid().to_der().unwrap_or_default()
    }

    fn from_ec_params(der: &[u8]) -> Option<Curve> {
        use der::asn1::PrintableStringRef;
        if let Ok(oid) = ObjectIdentifier::from_der(der) {
            return Curve::ALL.into_iter().find(|curve| curve.oid() == oid);
        }
        let name = PrintableStringRef::from_der(der).ok()?;
        Curve::ALL
            .into_iter()
            .find(|curve| printable_name(*curve) == Some(name.as_str()))
    }
}

/// The name PKCS#11 3.0 allows in a DER PrintableString instead of the
/// OID, for the Edwards and Montgomery curves.
fn printable_name(curve: Curve) -> Option<&'static str> {
    match curve {
        Curve::Ed25519 => Some("edwards25519"),
        Curve::Ed448 => Some("edwards448"),
        Curve::X25519 => Some("curve25519"),
        Curve::X448 => Some("curve448"),
        Curve::P256 | Curve::P384 | Curve::P521 => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_domain::Curve;

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
