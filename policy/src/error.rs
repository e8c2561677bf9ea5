//! Errors in a policy file, each naming the file, the line, the column and
//! the field.

use std::ops::Range;
use std::path::PathBuf;

/// A policy file that cannot be read or is not a valid policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("{}: cannot read the policy: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not a valid policy. Displayed as
    /// `FILE:LINE:COLUMN: FIELD: MESSAGE`.
    #[error("{origin}:{line}:{column}: {field}: {message}")]
    Invalid {
        /// The file name (or whatever name the text was given).
        origin: String,
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// Where in the policy: `class "tls", purpose`,
        /// `application "web", exe`, `settings, mechanisms`, ...
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl PolicyError {
    pub(crate) fn at(
        text: &str,
        origin: &str,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> PolicyError {
        let (line, column) = line_column(text, span.start);
        PolicyError::Invalid {
            origin: origin.to_owned(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        }
    }

    /// A serde / TOML syntax error: the field is worked out from the text
    /// around the error.
    pub(crate) fn from_toml(text: &str, origin: &str, error: &toml::de::Error) -> PolicyError {
        let span = error.span().unwrap_or(0..0);
        let message = error.message().trim_end().to_owned();
        PolicyError::at(
            text,
            origin,
            span.clone(),
            field_at(text, span.start),
            message,
        )
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(text, offset.min(text.len()));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// Names the field at a byte offset, for errors that carry only a span:
/// the table it is in (`settings`, `class "tls"`, `application #2`) and
/// the key on its line.
pub(crate) fn field_at(text: &str, offset: usize) -> String {
    let offset = floor_char_boundary(text, offset.min(text.len()));
    let table = table_at(text, offset);
    match key_at(text, offset) {
        Some(key) if table.is_empty() => key,
        Some(key) => format!("{table}, {key}"),
        None if table.is_empty() => "policy".to_owned(),
        None => table,
    }
}

/// A table header line: `[name]` or `[[name]]`, perhaps with a comment.
fn header_name(line: &str) -> Option<(&str, bool)> {
    let line = line.trim();
    let line = line.split_once('#').map_or(line, |(l, _)| l).trim_end();
    let (inner, array) =
        if let Some(inner) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            (inner, true)
        } else {
            (line.strip_prefix('[')?.strip_suffix(']')?, false)
        };
    let inner = inner.trim();
    let is_name = !inner.is_empty()
        && inner
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    is_name.then_some((inner, array))
}

fn table_at(text: &str, offset: usize) -> String {
    let mut current: Option<(&str, bool, usize)> = None; // (name, array, header offset)
    let mut counts: Vec<(&str, usize)> = Vec::new();
    let mut index = 0;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        if pos > offset {
            break;
        }
        if let Some((name, array)) = header_name(line) {
            if array {
                match counts.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, count)) => {
                        *count += 1;
                        index = *count;
                    }
                    None => {
                        counts.push((name, 1));
                        index = 1;
                    }
                }
            }
            current = Some((name, array, pos));
        }
        pos += line.len();
    }
    let Some((name, array, start)) = current else {
        return String::new();
    };
    if !array {
        return name.to_owned();
    }
    // Name an array-of-tables entry by its `name = "..."` if it has one.
    let section = &text[start..];
    let entry_name = section
        .lines()
        .skip(1)
        .take_while(|l| header_name(l).is_none())
        .find_map(|l| {
            let (key, value) = l.split_once('=')?;
            (key.trim() == "name").then(|| value.trim())?;
            let value = value.trim().strip_prefix('"')?;
            Some(value.split('"').next()?.to_owned())
        });
    match entry_name {
        Some(entry) => format!("{name} \"{entry}\""),
        None => format!("{name} #{index}"),
    }
}

/// The key at or before `offset` on its line: the key itself when the
/// offset points at one (`unknown field`), else the last `key =` before it.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let is_key_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    // The offset points at a key followed by `=`.
    let here = &text[offset..line_end];
    let word: String = here.chars().take_while(|&c| is_key_char(c)).collect();
    if !word.is_empty() && here[word.len()..].trim_start().starts_with('=') {
        return Some(word);
    }
    // The last `key =` before the offset on the same line.
    let before = &text[line_start..offset];
    let mut found = None;
    for (i, _) in before.match_indices('=') {
        let key: String = before[..i]
            .trim_end()
            .chars()
            .rev()
            .take_while(|&c| is_key_char(c))
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        if !key.is_empty() {
            found = Some(key);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns() {
        let text = "a\nbé c\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 2), (2, 1));
        assert_eq!(line_column(text, 5), (2, 3));
        assert_eq!(line_column(text, 6), (2, 4));
        assert_eq!(line_column(text, 100), (3, 1));
    }

    #[test]
    fn fields_from_text() {
        let text = "[settings]\nmode = \"x\"\n\n[[class]]\nname = \"tls\"\npurpose = \"s\"\n\n[[class]]\nfoo = 1\ngrants = [ { application = \"w\", operations = [\"x\"] } ]\n";
        let at = |needle: &str| field_at(text, text.find(needle).unwrap());
        assert_eq!(at("\"x\""), "settings, mode");
        assert_eq!(at("\"s\""), "class \"tls\", purpose");
        assert_eq!(at("foo"), "class #2, foo");
        assert_eq!(at("[\"x\"]"), "class #2, operations");
        assert_eq!(at("application ="), "class #2, application");
        assert_eq!(field_at("x = 1", 4), "x");
        assert_eq!(field_at("", 0), "policy");
    }
}
