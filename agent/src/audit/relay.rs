//! A copy of every record sent to syslog as one JSON line; a receiver that
//! stops reading never stalls the trail.

use std::time::Duration;

use keyward_inventory::AuditEvent;

/// How long one message to syslog may wait for room in its socket.
pub(crate) const SYSLOG_SEND_TIMEOUT: Duration = Duration::from_millis(200);

/// Forwards stored records to the local syslog socket, one JSON object per
/// message (facility authpriv, severity notice; refusals and failures at
/// warning). A socket that is missing, refuses, or is full for
/// [`SYSLOG_SEND_TIMEOUT`] is logged once per failure streak and tried
/// again with the next batch; the trail itself never depends on it.
pub(crate) struct Syslog {
    pub(crate) path: std::path::PathBuf,
    pub(crate) logger: Option<syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>>,
    pub(crate) failing: bool,
}

impl Syslog {
    pub(crate) fn new(path: &std::path::Path) -> Syslog {
        Syslog {
            path: path.to_owned(),
            logger: None,
            failing: false,
        }
    }

    pub(crate) fn send(&mut self, first_seq: u64, records: &[AuditEvent]) {
        for (i, e) in records.iter().enumerate() {
            let line = syslog_line(first_seq + i as u64, e);
            if !self.send_line(&line, e.result != 0) {
                return;
            }
        }
    }

    /// Sends one message (at warning, else notice); false when syslog is
    /// away (said once per failure streak).
    pub(crate) fn send_line(&mut self, line: &str, warning: bool) -> bool {
        let sent = self.connect().and_then(|l| {
            let r = if warning {
                l.warning(line)
            } else {
                l.notice(line)
            };
            r.map_err(|err| err.to_string())
        });
        match sent {
            Ok(()) => {
                if self.failing {
                    self.failing = false;
                    log::warn!("audit: syslog {} works again", self.path.display());
                }
                true
            }
            Err(err) => {
                self.logger = None;
                if !self.failing {
                    self.failing = true;
                    log::warn!(
                        "audit: cannot forward to syslog {}: {err}; the trail is unaffected",
                        self.path.display()
                    );
                }
                false
            }
        }
    }

    pub(crate) fn connect(
        &mut self,
    ) -> Result<&mut syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>, String> {
        if self.logger.is_none() {
            let formatter = syslog::Formatter3164 {
                facility: syslog::Facility::LOG_AUTHPRIV,
                hostname: None,
                process: "keyward-agent".into(),
                pid: std::process::id(),
            };
            let logger = syslog::unix_custom(formatter, &self.path).map_err(|e| e.to_string())?;
            // A syslog that stops reading fills its queue; a send then
            // waits at most this long instead of stalling the trail's writer.
            match &logger.backend {
                syslog::LoggerBackend::Unix(s) => s.set_write_timeout(Some(SYSLOG_SEND_TIMEOUT)),
                syslog::LoggerBackend::UnixStream(s) => {
                    s.get_ref().set_write_timeout(Some(SYSLOG_SEND_TIMEOUT))
                }
                _ => Ok(()),
            }
            .map_err(|e| e.to_string())?;
            self.logger = Some(logger);
        }
        self.logger.as_mut().ok_or_else(|| "not connected".into())
    }
}

/// One record as the JSON object forwarded to syslog: its seq and the
/// event's fields, as `keyward --json audit tail` shows them.
pub(crate) fn syslog_line(seq: u64, e: &AuditEvent) -> String {
    let mut v = serde_json::to_value(e).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("seq".into(), seq.into());
    }
    v.to_string()
}
