//! The rule for the name of a new managed key.

use crate::ParseError;

/// The longest key name, in characters.
pub const KEY_NAME_MAX: usize = 64;

/// Checks the name given to a new managed key (`key create`, `key adopt`,
/// `key import --name`): ASCII letters, digits, `-`, `_` and `.`, starting
/// with a letter or digit, 1 to [`KEY_NAME_MAX`] characters.
///
/// Such a name needs no escaping in an RFC 7512 `pkcs11:` URI (`object=`),
/// in a `CKA_LABEL`, in a Prometheus metric label or on a command line.
/// Keys that already carry another name (made before the rule, restored
/// from a backup) keep it: only new names are checked.
pub fn check_key_name(name: &str) -> Result<(), ParseError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let good = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= KEY_NAME_MAX
        && name.chars().all(allowed);
    if good {
        Ok(())
    } else {
        Err(ParseError::new(format!(
            "key name {name:?}: use letters, digits, '-', '_' and '.', 1-{KEY_NAME_MAX} \
             characters, starting with a letter or digit"
        )))
    }
}
