//! The `[webhook]` table of the agent's configuration: where events are
//! posted, with which bearer token, how long a post may take and how often
//! it is tried again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

/// `[webhook]`: optional; absent, the agent posts nothing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are posted: an `http://` or `https://` URL with a host
    /// and no user or password in it.
    pub url: String,
    /// A file whose first line is the bearer token sent as
    /// `Authorization: Bearer ...` (mode 0600 or 0400, owned by the agent's
    /// user). Absent: no `Authorization` header.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// How long one post may take, connect to answer, in seconds (1-300).
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// How often a failed post is tried again (0-10); then the event is
    /// counted as failed.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// The wait before the first retry, in milliseconds (10-60000); it
    /// doubles before each further retry.
    #[serde(default = "default_backoff")]
    pub backoff_ms: u64,
    /// Events waiting to be posted at most (1-10000); when the queue is
    /// full, further events are dropped and counted.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// How often the conditions are looked at, in seconds (1-3600).
    #[serde(default = "default_check")]
    pub check_seconds: u64,
    /// How long an active key may be past its rotation date or protect
    /// period before `rotation-overdue` fires, in seconds: the scheduler
    /// rotates keys once a minute, so a short delay is no failure.
    #[serde(default = "default_overdue_grace")]
    pub overdue_grace_seconds: u64,
    /// `request-expiring` fires when a pending approval request expires
    /// within this many seconds.
    #[serde(default = "default_request_warning")]
    pub request_warning_seconds: u64,
    /// `certificate-expiring` fires this many seconds before a
    /// certificate's notAfter for keys whose class names no
    /// `certificate_warning`.
    #[serde(default = "default_certificate_warning")]
    pub certificate_warning_seconds: u64,
}

fn default_timeout() -> u64 {
    5
}
fn default_retries() -> u32 {
    3
}
fn default_backoff() -> u64 {
    1000
}
fn default_queue() -> usize {
    256
}
fn default_check() -> u64 {
    60
}
fn default_overdue_grace() -> u64 {
    900
}
fn default_request_warning() -> u64 {
    12 * 3600
}
fn default_certificate_warning() -> u64 {
    30 * 86_400
}

impl WebhookConfig {
    /// Checks every value; the message starts with `[webhook]`.
    pub fn validate(&self) -> Result<(), String> {
        check_url(&self.url).map_err(|e| format!("[webhook] url: {e}"))?;
        let ranges: [(&str, u64, u64, u64); 5] = [
            ("timeout_seconds", self.timeout_seconds, 1, 300),
            ("retries", u64::from(self.retries), 0, 10),
            ("backoff_ms", self.backoff_ms, 10, 60_000),
            ("queue", self.queue as u64, 1, 10_000),
            ("check_seconds", self.check_seconds, 1, 3600),
        ];
        for (name, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(format!(
                    "[webhook] {name} = {value}: must be between {min} and {max}"
                ));
            }
        }
        if let Some(p) = &self.bearer_token_file {
            check_token_file(p).map_err(|e| format!("[webhook] bearer_token_file: {e}"))?;
        }
        Ok(())
    }

    /// The bearer token, read from its file (checked again: mode, a
    /// single printable line). Errors name the file, never the token.
    pub fn bearer_token(&self) -> Result<Option<Zeroizing<String>>, String> {
        match &self.bearer_token_file {
            None => Ok(None),
            Some(p) => read_token(p)
                .map(Some)
                .map_err(|e| format!("[webhook] bearer_token_file: {e}")),
        }
    }

    /// One post's time limit.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds)
    }
}

/// `url`: http or https, a host, no credentials, no fragment.
fn check_url(url: &str) -> Result<(), String> {
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not an absolute http:// or https:// URL ({e})"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Err(format!("{url:?}: scheme {other:?} is not http or https")),
        None => {
            return Err(format!(
                "{url:?} is not an absolute http:// or https:// URL"
            ))
        }
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("{url:?} names no host"));
    };
    if authority.as_str().contains('@') {
        // Never echo what may be a password.
        return Err(
            "the URL carries a user or password: give a bearer_token_file instead".to_owned(),
        );
    }
    if authority.host().is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    if url.contains('#') {
        return Err(format!("{url:?}: a fragment has no place in a webhook URL"));
    }
    Ok(())
}

/// The token file is the agent's alone: no group or other permission.
fn check_token_file(p: &Path) -> Result<(), String> {
    crate::settings::check_private_file("the token file", p)?;
    read_token(p).map(drop)
}

fn read_token(p: &Path) -> Result<Zeroizing<String>, String> {
    let all = Zeroizing::new(std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?);
    let line = all.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(format!("{} has an empty first line", p.display()));
    }
    // A header value: visible ASCII only (RFC 6750's b64token and more).
    if !line.iter().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{}: the token must be printable ASCII without spaces",
            p.display()
        ));
    }
    Ok(Zeroizing::new(String::from_utf8_lossy(line).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> WebhookConfig {
        toml::from_str(&format!("url = {url:?}")).unwrap()
    }

    #[test]
    fn urls_are_http_or_https_with_a_host_and_no_credentials() {
        for ok in [
            "http://127.0.0.1:8080/hook",
            "https://alerts.example.org/keyward?team=pki",
            "http://[::1]:9/x",
        ] {
            config(ok)
                .validate()
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, says) in [
            ("ftp://example.org/x", "is not http or https"),
            ("example.org/hook", "not an absolute"),
            ("/hook", "not an absolute"),
            ("http://user:s3cret@example.org/", "user or password"),
            ("http:// bad", "not an absolute"),
            ("https://example.org/x#frag", "fragment"),
        ] {
            let e = config(bad).validate().unwrap_err();
            assert!(e.starts_with("[webhook] url: "), "{bad}: {e}");
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn values_out_of_range_are_refused() {
        for (line, says) in [
            ("timeout_seconds = 0", "timeout_seconds = 0"),
            ("retries = 11", "retries = 11"),
            ("backoff_ms = 1", "backoff_ms = 1"),
            ("queue = 0", "queue = 0"),
            ("check_seconds = 0", "check_seconds = 0"),
        ] {
            let c: WebhookConfig =
                toml::from_str(&format!("url = \"http://127.0.0.1:1/\"\n{line}")).unwrap();
            let e = c.validate().unwrap_err();
            assert!(e.contains(says) && e.contains("must be between"), "{e}");
        }
        let e = toml::from_str::<WebhookConfig>("url = \"http://127.0.0.1:1/\"\nretry = 2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn the_token_file_is_the_agents_alone_and_never_echoed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "t0ken-VALUE\n").unwrap();
        let mut c = config("https://example.org/");
        c.bearer_token_file = Some(p.clone());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.contains("mode 0644") && !e.contains("t0ken"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        c.validate().unwrap();
        assert_eq!(c.bearer_token().unwrap().unwrap().as_str(), "t0ken-VALUE");
        std::fs::write(&p, "two words\n").unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.contains("printable") && !e.contains("words"), "{e}");
        let debug = format!("{c:?}");
        assert!(!debug.contains("t0ken"), "{debug}");
    }
}
