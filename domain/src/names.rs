//! One macro for the enums whose text form is a fixed name per variant.

/// Implements `ALL`, `as_str`, `Display`, `FromStr` and `Serialize` /
/// `Deserialize` (the name in human-readable formats, the variant's index
/// otherwise) for a field-less enum, from one table of names.
macro_rules! named {
    ($ty:ident, $what:literal, [$($variant:ident => $name:literal),+ $(,)?]) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: [$ty; [$($ty::$variant),+].len()] = [$($ty::$variant),+];

            /// The value's one text form.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::ParseError;

            fn from_str(text: &str) -> Result<$ty, $crate::ParseError> {
                match text {
                    $($name => Ok($ty::$variant),)+
                    _ => Err($crate::ParseError::unknown($what, text, &[$($name),+])),
                }
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(self.as_str())
                } else {
                    // The variant's index (its position in ALL): a u8 on the wire.
                    s.serialize_u8(*self as u8)
                }
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                use serde::de::Error as _;
                if d.is_human_readable() {
                    let text = String::deserialize(d)?;
                    text.parse().map_err(D::Error::custom)
                } else {
                    let index = u8::deserialize(d)?;
                    $ty::ALL.get(usize::from(index)).copied().ok_or_else(|| {
                        D::Error::custom(format!("{} number {index} is not known", $what))
                    })
                }
            }
        }
    };
}

pub(crate) use named;
