//! `pkcs11:` URIs (RFC 7512) naming an administrator's key on their own
//! token: which token (`token=`, `manufacturer=`, `serial=`, `model=`,
//! `slot-id=`), which key (`object=`, `id=`, `type=private|public`), which
//! library (`module-path=`) and where the PIN is (`pin-source=`).
//!
//! The parser is strict: every attribute at most once, in its part of the
//! URI (the path before `?`, `;`-separated; the query after it,
//! `&`-separated), values percent-decoded, anything it does not know
//! refused with a message that says why. `pin-value=` is refused: a PIN
//! in a URI ends up in the process arguments and the shell's history.

use std::path::PathBuf;

/// A parsed `pkcs11:` URI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// `token=`: the token's label.
    pub token: Option<String>,
    /// `manufacturer=`: the token's manufacturer.
    pub manufacturer: Option<String>,
    /// `serial=`: the token's serial number.
    pub serial: Option<String>,
    /// `model=`: the token's model.
    pub model: Option<String>,
    /// `slot-id=`: the slot, as a number.
    pub slot_id: Option<u64>,
    /// `object=`: the key's `CKA_LABEL`.
    pub object: Option<String>,
    /// `id=`: the key's `CKA_ID` (percent-encoded bytes).
    pub id: Option<Vec<u8>>,
    /// `module-path=`: the PKCS#11 library.
    pub module_path: Option<PathBuf>,
    /// `pin-source=`: a file holding the PIN (`file:PATH` or an absolute path).
    pub pin_source: Option<PathBuf>,
}

impl Pkcs11Uri {
    /// Parses `text`; the error says what is wrong (never a PIN: a
    /// `pin-value` is refused without being repeated).
    pub fn parse(text: &str) -> Result<Pkcs11Uri, String> {
        let rest = text
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case("pkcs11:"))
            .map(|_| &text[7..])
            .ok_or_else(|| "a PKCS#11 URI starts with \"pkcs11:\"".to_owned())?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        if path.contains('#') || query.is_some_and(|q| q.contains('#')) {
            return Err("a PKCS#11 URI has no fragment (\"#\")".to_owned());
        }
        let mut uri = Pkcs11Uri::default();
        let mut seen: Vec<String> = Vec::new();
        for (part, sep) in [(Some(path), ';'), (query, '&')] {
            let Some(part) = part else { continue };
            if part.is_empty() {
                continue;
            }
            for attr in part.split(sep) {
                let (name, value) = attr
                    .split_once('=')
                    .ok_or_else(|| format!("{:?} is not name=value", clip(attr)))?;
                if seen.iter().any(|s| s == name) {
                    return Err(format!("{name} is given twice"));
                }
                seen.push(name.to_owned());
                uri.set(name, value, sep == '&')?;
            }
        }
        Ok(uri)
    }

    fn set(&mut self, name: &str, value: &str, in_query: bool) -> Result<(), String> {
        const PATH_ATTRS: &[&str] = &[
            "token",
            "manufacturer",
            "serial",
            "model",
            "slot-id",
            "object",
            "id",
            "type",
        ];
        const QUERY_ATTRS: &[&str] = &["module-path", "pin-source"];
        if name == "pin-value" {
            return Err(
                "pin-value is not accepted: a PIN in the command line is visible to other \
                 users; use pin-source=file:PATH, KEYWARD_ADMIN_PIN or the prompt"
                    .to_owned(),
            );
        }
        let placed = |ok: bool, part: &str| {
            if ok {
                Ok(())
            } else {
                Err(format!("{name} belongs in the URI's {part}"))
            }
        };
        if PATH_ATTRS.contains(&name) {
            placed(!in_query, "path (before \"?\", separated by \";\")")?;
        } else if QUERY_ATTRS.contains(&name) {
            placed(in_query, "query (after \"?\", separated by \"&\")")?;
        } else {
            return Err(format!(
                "{:?} is not supported (known: {}, {})",
                clip(name),
                PATH_ATTRS.join(", "),
                QUERY_ATTRS.join(", ")
            ));
        }
        let bytes = percent_decode(value).map_err(|e| format!("{name}: {e}"))?;
        if name == "id" {
            if bytes.is_empty() {
                return Err("id is empty".to_owned());
            }
            self.id = Some(bytes);
            return Ok(());
        }
        let text = String::from_utf8(bytes).map_err(|_| format!("{name} is not UTF-8"))?;
        if text.is_empty() {
            return Err(format!("{name} is empty"));
        }
        match name {
            "token" => self.token = Some(text),
            "manufacturer" => self.manufacturer = Some(text),
            "serial" => self.serial = Some(text),
            "model" => self.model = Some(text),
            "object" => self.object = Some(text),
            "slot-id" => {
                self.slot_id = Some(
                    text.parse()
                        .ok()
                        .filter(|_| text.bytes().all(|b| b.is_ascii_digit()))
                        .ok_or_else(|| "slot-id is not a number".to_owned())?,
                )
            }
            "type" => {
                // The key pair is found either way; other object types
                // cannot sign.
                if text != "private" && text != "public" {
                    return Err(format!(
                        "type={:?}: an administrator's key is type=private (or public)",
                        clip(&text)
                    ));
                }
            }
            "module-path" => {
                let path = PathBuf::from(text);
                if !path.is_absolute() {
                    return Err("module-path must be an absolute path".to_owned());
                }
                self.module_path = Some(path);
            }
            "pin-source" => self.pin_source = Some(pin_source(&text)?),
            _ => return Err(format!("{name} is not supported")),
        }
        Ok(())
    }
}

/// `pin-source=`: `file:PATH`, `file://PATH` or an absolute path.
fn pin_source(text: &str) -> Result<PathBuf, String> {
    let path = text
        .strip_prefix("file://")
        .or_else(|| text.strip_prefix("file:"))
        .unwrap_or(text);
    if !path.starts_with('/') {
        return Err("pin-source must be file:/ABSOLUTE/PATH (a file holding the PIN)".to_owned());
    }
    Ok(PathBuf::from(path))
}

/// `%XX` escapes decoded. Characters that RFC 7512 would have escaped
/// (space, controls, `"<>\^`{|}`) are refused unescaped, and so is a `%`
/// not followed by two hex digits.
pub fn percent_decode(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "a \"%\" must be followed by two hex digits".to_owned())?;
            out.push(hex);
            i += 3;
        } else if b.is_ascii_control() || b" \"<>\\^`{|}".contains(&b) {
            return Err(format!(
                "the character {:?} must be percent-encoded",
                char::from(b)
            ));
        } else {
            out.push(b);
            i += 1;
        }
    }
    Ok(out)
}

/// At most 40 characters of `text`, for error messages.
fn clip(text: &str) -> String {
    let mut out: String = text.chars().take(40).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_uri() {
        let uri = Pkcs11Uri::parse(
            "pkcs11:token=Admin%20Token;object=alice%2fkey;id=%01%ab;type=private;\
             manufacturer=SoftHSM%20project;serial=abc;model=SoftHSM%20v2;slot-id=7\
             ?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin",
        )
        .unwrap();
        assert_eq!(
            uri,
            Pkcs11Uri {
                token: Some("Admin Token".into()),
                manufacturer: Some("SoftHSM project".into()),
                serial: Some("abc".into()),
                model: Some("SoftHSM v2".into()),
                slot_id: Some(7),
                object: Some("alice/key".into()),
                id: Some(vec![0x01, 0xab]),
                module_path: Some("/usr/lib/softhsm/libsofthsm2.so".into()),
                pin_source: Some("/run/pin".into()),
            }
        );
    }

    #[test]
    fn short_forms() {
        assert_eq!(Pkcs11Uri::parse("pkcs11:").unwrap(), Pkcs11Uri::default());
        assert_eq!(
            Pkcs11Uri::parse("PKCS11:object=k")
                .unwrap()
                .object
                .as_deref(),
            Some("k")
        );
        assert_eq!(
            Pkcs11Uri::parse("pkcs11:?pin-source=/p")
                .unwrap()
                .pin_source,
            Some(PathBuf::from("/p"))
        );
        assert_eq!(
            Pkcs11Uri::parse("pkcs11:token=t?pin-source=file:///p")
                .unwrap()
                .pin_source,
            Some(PathBuf::from("/p"))
        );
        // UTF-8 labels, escaped or not.
        assert_eq!(
            Pkcs11Uri::parse("pkcs11:token=cl%C3%A9;object=schlüssel")
                .unwrap()
                .token
                .as_deref(),
            Some("clé")
        );
    }

    #[test]
    fn bad_uris_are_refused_with_a_reason() {
        for (text, why) in [
            ("token=x", "starts with \"pkcs11:\""),
            ("pkcs1:token=x", "starts with \"pkcs11:\""),
            ("", "starts with"),
            ("pkcs11:token", "not name=value"),
            ("pkcs11:token=a;token=b", "twice"),
            ("pkcs11:token=a%2", "two hex digits"),
            ("pkcs11:token=a%zz", "two hex digits"),
            ("pkcs11:token=a%+1", "two hex digits"),
            ("pkcs11:token=a b", "percent-encoded"),
            ("pkcs11:token=a\tb", "percent-encoded"),
            ("pkcs11:token=", "empty"),
            ("pkcs11:id=", "empty"),
            ("pkcs11:token=%ff", "not UTF-8"),
            (
                "pkcs11:object=k?pin-value=1234",
                "pin-value is not accepted",
            ),
            ("pkcs11:pin-value=1234", "pin-value is not accepted"),
            ("pkcs11:module-path=/lib.so", "belongs in the URI's query"),
            ("pkcs11:?object=k", "belongs in the URI's path"),
            ("pkcs11:?module-path=lib.so", "absolute"),
            ("pkcs11:?pin-source=pin.txt", "pin-source must be"),
            ("pkcs11:?pin-source=%7C/bin/getpin", "pin-source must be"),
            ("pkcs11:?pin-source=|/bin/getpin", "percent-encoded"),
            ("pkcs11:type=cert", "type=private"),
            ("pkcs11:slot-id=x", "not a number"),
            ("pkcs11:slot-id=+1", "not a number"),
            ("pkcs11:library-version=1", "not supported"),
            ("pkcs11:x-vendor=1", "not supported"),
            ("pkcs11:object=k#frag", "fragment"),
            ("pkcs11:object=k;;id=%01", "not name=value"),
        ] {
            let e = Pkcs11Uri::parse(text).expect_err(text);
            assert!(e.contains(why), "{text:?}: {e}");
            assert!(!e.contains("1234"), "{text:?} repeats the PIN: {e}");
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%41%7e").unwrap(), b"aA~");
        assert_eq!(percent_decode("%00%FF").unwrap(), [0, 0xff]);
        assert_eq!(percent_decode("").unwrap(), b"");
        for bad in ["%", "%4", "%g0", "%%41", "a\nb"] {
            assert!(percent_decode(bad).is_err(), "{bad:?}");
        }
    }
}
