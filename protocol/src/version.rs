//! Protocol versions and how two sides agree on one.
//!
//! keyward speaks two protocols over the same framing ([`crate::frame`]):
//! the application protocol (the module ↔ the agent's socket,
//! [`crate::Request`] / [`crate::Response`]) and the admin protocol (the
//! `keyward` command ↔ the agent's admin socket, [`crate::admin`]). Each has
//! its own version number, and each side of a connection speaks a
//! [`VersionRange`] of it.
//!
//! - The frame header's version field is the version of the framing itself
//!   ([`FRAME_VERSION`], magic, length, one postcard payload), not of the
//!   messages: it stays 2 as long as the framing does not change, so that
//!   any keyward can at least read a peer's hello and say what it speaks.
//! - Every connection opens with a hello that announces the client's range:
//!   [`crate::Request::Hello`] on the application socket,
//!   [`crate::admin::AdminRequest::Hello`] on the admin socket. Both are the
//!   first variant of their enum and carry one [`VersionRange`]; that shape
//!   never changes.
//! - The agent answers with the highest version in both ranges
//!   ([`VersionRange::pick`]): [`crate::Response::Hello`] /
//!   [`crate::admin::AdminResponse::Hello`], after which the connection
//!   speaks that version. When the ranges do not meet it answers
//!   [`crate::Response::NoCommonVersion`] /
//!   [`crate::admin::AdminResponse::NoCommonVersion`] with its own range and
//!   package version ([`VersionRefusal`]) and closes the connection; the
//!   client says which side to upgrade ([`Mismatch`]). Those answers keep
//!   their places in their enums for ever.
//! - Negotiation happens once per connection; the per-call path carries no
//!   version.
//! - Before negotiation existed, both protocols were one, version 2
//!   ([`LEGACY_VERSION`]), compared for strict equality, and the first
//!   message was `Hello { version }`. The agent recognises such a hello
//!   ([`legacy_hello`]) and answers it in the old form with its own
//!   version, so an old module logs the mismatch instead of a decode error.
//!   An old agent closes the connection on a new hello without answering;
//!   new clients say so in their message. An old `keyward` sends no hello:
//!   the agent answers its first request with an `Err` text (which every
//!   `keyward` shows) saying to upgrade it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The frame header's version field: the framing, not the messages.
pub const FRAME_VERSION: u16 = 2;

/// The one version both protocols shared before they were negotiated.
pub const LEGACY_VERSION: u16 = 2;

/// The application-protocol versions this build speaks.
///
/// 3: the hello announces a range and may be refused with
/// `NoCommonVersion`.
pub const APP_VERSIONS: VersionRange = VersionRange { min: 3, max: 3 };

/// The admin-protocol versions this build speaks.
///
/// 3: the connection opens with a hello (the admin protocol's first
/// version of its own; it continues the shared numbering so that no number
/// means two things).
/// 4: key states, purposes, algorithms and approval statuses travel as
/// keyward-domain's types (a state, purpose or status is its variant's
/// number on the wire, no longer its name): a keyward speaking 3 and an
/// agent speaking 4 tell each other which side to upgrade.
/// 5: approval requests carry their reason, and can be listed and shown
/// (`KeyRequest::RequestList`, `RequestShow`, `KeyResponse::Requests`).
/// 6: dual control: requests carry their parameters, quorum and decisions;
/// administrators approve or deny them with a signature
/// (`KeyRequest::RequestDecide`) and withdraw them (`RequestCancel`);
/// statuses `denied`, `cancelled` and `failed`; recovery windows on
/// compromised keys (`KeyRequest::Recover`, `KeyInfo::recovery_until`).
/// 7: backups (`KeyRequest::Backup`, `KeyResponse::Backup`); certificates
/// (`KeyRequest::Cert`, `KeyResponse::Cert`, `KeyInfo::certificates`,
/// `CertificateInfo::expiring`).
/// 8: transitions carry an RFC 5280 reason code
/// (`KeyRequest::Transition::code`, `KeyInfo::reason_code`).
/// 9: the status says where the store is and, for a fleet's shared store,
/// whether the agent's view of it is in force (`Status::store`).
pub const ADMIN_VERSIONS: VersionRange = VersionRange { min: 9, max: 9 };

/// The first admin-protocol version that opens with a hello: an agent
/// older than that closes the connection on a hello.
pub const ADMIN_HELLO_SINCE: u16 = 3;

/// The versions one side speaks: every version from `min` to `max`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VersionRange {
    /// The oldest version spoken.
    pub min: u16,
    /// The newest version spoken.
    pub max: u16,
}

impl VersionRange {
    /// Exactly one version.
    pub const fn only(version: u16) -> VersionRange {
        VersionRange {
            min: version,
            max: version,
        }
    }

    /// Whether `version` is in the range.
    pub fn contains(self, version: u16) -> bool {
        self.min <= version && version <= self.max
    }

    /// The highest version both `self` (this side) and `theirs` speak, or
    /// why there is none. A range whose `min` is above its `max` is empty
    /// and meets nothing.
    pub fn pick(self, theirs: VersionRange) -> Result<u16, Mismatch> {
        let high = self.max.min(theirs.max);
        if self.min <= self.max && theirs.min <= theirs.max && high >= self.min.max(theirs.min) {
            Ok(high)
        } else {
            Err(Mismatch { ours: self, theirs })
        }
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{} to {}", self.min, self.max)
        }
    }
}

/// Two sides that speak no version in common.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// What this side speaks.
    pub ours: VersionRange,
    /// What the peer speaks.
    pub theirs: VersionRange,
}

/// Which side of a [`Mismatch`] is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Older {
    /// This side: it must be upgraded.
    Ours,
    /// The peer: it must be upgraded.
    Theirs,
    /// Neither range is below the other (an empty range was announced).
    Unclear,
}

impl Mismatch {
    /// Which side speaks only versions older than the other's.
    pub fn older(&self) -> Older {
        let (o, t) = (self.ours, self.theirs);
        if o.min > o.max || t.min > t.max {
            Older::Unclear
        } else if o.max < t.min {
            Older::Ours
        } else if t.max < o.min {
            Older::Theirs
        } else {
            Older::Unclear
        }
    }

    /// A sentence for people: both sides' versions and what to upgrade.
    /// `protocol` is "application" or "admin"; `us` and `them` name the two
    /// sides ("this module", "keyward-agent 0.1.0").
    pub fn explain(&self, protocol: &str, us: &str, them: &str) -> String {
        let advice = match self.older() {
            Older::Ours => format!("upgrade {us} to a release that speaks {}", self.theirs),
            Older::Theirs => format!("upgrade {them} to a release that speaks {}", self.ours),
            Older::Unclear => format!("{them} announced no valid range"),
        };
        format!(
            "no {protocol} protocol version in common: {us} speaks {}, {them} speaks {}; {advice}",
            self.ours, self.theirs
        )
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no version in common: this side speaks {}, the peer speaks {}",
            self.ours, self.theirs
        )
    }
}

/// The agent's answer to a hello whose range it does not meet: what it
/// speaks, and its package version. Its encoding never changes.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct VersionRefusal {
    /// The versions the agent speaks.
    pub versions: VersionRange,
    /// The agent's package version.
    pub agent_version: String,
}

impl VersionRefusal {
    /// The mismatch seen from the client that speaks `ours`.
    pub fn mismatch(&self, ours: VersionRange) -> Mismatch {
        Mismatch {
            ours,
            theirs: self.versions,
        }
    }
}

/// The version a pre-negotiation hello announces, if `payload` (a frame's
/// payload that did not decode as this build's first message) is one:
/// variant 0 followed by one `u16` and nothing else. Such a client speaks
/// exactly that version, of both protocols.
pub fn legacy_hello(payload: &[u8]) -> Option<u16> {
    match postcard::from_bytes::<(u8, u16)>(payload) {
        Ok((0, version)) if postcard::to_allocvec(&(0u8, version)).ok()? == payload => {
            Some(version)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(min: u16, max: u16) -> VersionRange {
        VersionRange { min, max }
    }

    #[test]
    fn the_highest_common_version_is_picked() {
        assert_eq!(r(3, 3).pick(r(3, 3)), Ok(3));
        assert_eq!(r(3, 5).pick(r(2, 4)), Ok(4));
        assert_eq!(r(2, 4).pick(r(3, 5)), Ok(4));
        assert_eq!(r(3, 9).pick(r(5, 5)), Ok(5));
        assert_eq!(r(3, 4).pick(r(4, 7)), Ok(4));
        // Symmetric.
        for (a, b) in [(r(1, 3), r(2, 8)), (r(4, 4), r(1, 9)), (r(2, 2), r(2, 3))] {
            assert_eq!(a.pick(b), b.pick(a));
        }
    }

    #[test]
    fn disjoint_or_empty_ranges_are_a_mismatch_naming_the_older_side() {
        let m = r(3, 3).pick(r(4, 6)).unwrap_err();
        assert_eq!(m.ours, r(3, 3));
        assert_eq!(m.theirs, r(4, 6));
        assert_eq!(m.older(), Older::Ours);
        let text = m.explain("admin", "keyward", "keyward-agent 9.0");
        assert_eq!(
            text,
            "no admin protocol version in common: keyward speaks 3, keyward-agent 9.0 speaks 4 to 6; \
             upgrade keyward to a release that speaks 4 to 6"
        );
        let m = r(5, 7).pick(r(2, 2)).unwrap_err();
        assert_eq!(m.older(), Older::Theirs);
        let text = m.explain("application", "this agent", "the module");
        assert!(text.contains("the module speaks 2"), "{text}");
        assert!(
            text.ends_with("upgrade the module to a release that speaks 5 to 7"),
            "{text}"
        );
        // An empty range (min above max) meets nothing, not even itself.
        let m = r(3, 3).pick(r(4, 2)).unwrap_err();
        assert_eq!(m.older(), Older::Unclear);
        assert!(r(4, 2).pick(r(4, 2)).is_err());
        assert!(r(3, 3).pick(r(3, 2)).is_err());
    }

    #[test]
    fn a_range_contains_its_ends_only() {
        assert!(r(3, 5).contains(3) && r(3, 5).contains(5) && r(3, 5).contains(4));
        assert!(!r(3, 5).contains(2) && !r(3, 5).contains(6));
        assert_eq!(VersionRange::only(7), r(7, 7));
    }

    #[test]
    fn a_pre_negotiation_hello_is_recognised_and_nothing_else() {
        /// The hello of the combined protocol 2, as such clients encode it.
        #[derive(Serialize)]
        enum OldRequest {
            Hello { version: u16 },
        }
        let old = postcard::to_allocvec(&OldRequest::Hello { version: 2 }).unwrap();
        assert_eq!(legacy_hello(&old), Some(2));
        let big = postcard::to_allocvec(&OldRequest::Hello { version: 700 }).unwrap();
        assert_eq!(legacy_hello(&big), Some(700));
        // This build's hello (two numbers), another variant, trailing bytes,
        // a non-minimal encoding, nothing: not a legacy hello.
        let new = postcard::to_allocvec(&crate::Request::Hello {
            versions: APP_VERSIONS,
        })
        .unwrap();
        assert_eq!(legacy_hello(&new), None);
        assert_eq!(legacy_hello(&[1, 2]), None);
        assert_eq!(legacy_hello(&[0, 2, 0]), None);
        assert_eq!(legacy_hello(&[0, 0x82, 0x00]), None);
        assert_eq!(legacy_hello(&[]), None);
    }

    #[test]
    fn the_hello_and_its_answers_keep_their_encoding() {
        // Any keyward must be able to read these, whatever its version:
        // variant 0 with two numbers; answers at fixed places.
        let hello = crate::Request::Hello { versions: r(3, 4) };
        assert_eq!(postcard::to_allocvec(&hello).unwrap(), [0, 3, 4]);
        let admin = crate::admin::AdminRequest::Hello { versions: r(3, 4) };
        assert_eq!(postcard::to_allocvec(&admin).unwrap(), [0, 3, 4]);
        let reply = crate::Response::Hello(crate::HelloReply {
            version: 3,
            agent_version: "v".into(),
            instance: 1,
        });
        assert_eq!(postcard::to_allocvec(&reply).unwrap(), [1, 3, 1, b'v', 1]);
        let refusal = VersionRefusal {
            versions: r(3, 4),
            agent_version: "v".into(),
        };
        let app =
            postcard::to_allocvec(&crate::Response::NoCommonVersion(refusal.clone())).unwrap();
        // After the thirteen answers that existed when it was added.
        assert_eq!(app[0], 13);
        assert_eq!(&app[1..], [3, 4, 1, b'v']);
        let admin =
            postcard::to_allocvec(&crate::admin::AdminResponse::NoCommonVersion(refusal)).unwrap();
        assert_eq!(admin, [2, 3, 4, 1, b'v']);
        let err = postcard::to_allocvec(&crate::admin::AdminResponse::Err("x".into())).unwrap();
        assert_eq!(err, [0, 1, b'x']);
        let ok = postcard::to_allocvec(&crate::admin::AdminResponse::Hello(
            crate::admin::AdminHello {
                version: 3,
                agent_version: "v".into(),
            },
        ))
        .unwrap();
        assert_eq!(ok, [1, 3, 1, b'v']);
    }
}
