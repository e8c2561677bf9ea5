//! The error of every text form's parser.

use std::fmt;

/// A text that is not the name of a value: what was expected, and the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    message: String,
}

impl ParseError {
    /// An error with its whole message.
    pub(crate) fn new(message: String) -> ParseError {
        ParseError { message }
    }

    /// `text` is not one of `names` (a `what`: "key state", ...).
    pub(crate) fn unknown(what: &str, text: &str, names: &[&str]) -> ParseError {
        ParseError::new(format!(
            "unknown {what} {text:?}: expected one of {}",
            names.join(", ")
        ))
    }

    /// The message, as `Display` writes it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ParseError {}
