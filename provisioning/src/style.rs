//! How text output is laid out, from the global flags: `--wide` (every
//! column of every table, no value shortened) and `--local` (times in the
//! system's time zone, with their offset, instead of UTC); and `plural`,
//! the one way a count and its noun are written (`keyward_policy::plural`).
//!
//! The style is set once per thread: by `main` from the flags, and by a
//! test around the text it checks (`with`), so that the pure rendering
//! functions keep their signatures.

use std::cell::RefCell;

/// The width tables fit by default, in characters.
pub const WIDTH: usize = 100;

/// The layout of text output.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Style {
    /// Every column at full length (`--wide`).
    pub wide: bool,
    /// Times in this zone, with their offset (`--local`); `None`: UTC.
    pub zone: Option<jiff::tz::TimeZone>,
}

impl Style {
    /// The style of the flags: `--local` reads the system's time zone
    /// (`TZ`, else `/etc/localtime`).
    pub fn from_flags(wide: bool, local: bool) -> Style {
        Style {
            wide,
            zone: local.then(jiff::tz::TimeZone::system),
        }
    }
}

thread_local! {
    static STYLE: RefCell<Style> = RefCell::new(Style::default());
}

/// Sets this thread's style.
pub fn set(style: Style) {
    STYLE.with(|s| *s.borrow_mut() = style);
}

/// Whether `--wide` is in force.
pub fn wide() -> bool {
    STYLE.with(|s| s.borrow().wide)
}

/// The zone times are shown in; `None`: UTC.
pub fn zone() -> Option<jiff::tz::TimeZone> {
    STYLE.with(|s| s.borrow().zone.clone())
}

/// Runs `f` with `style` in force, then restores the one before.
#[cfg(test)]
pub fn with<T>(style: Style, f: impl FnOnce() -> T) -> T {
    let before = STYLE.with(|s| std::mem::replace(&mut *s.borrow_mut(), style));
    let out = f();
    STYLE.with(|s| *s.borrow_mut() = before);
    out
}

/// A count and its noun: `1 application`, `3 key classes`
/// (`keyward_policy::plural`, shared with the agent's messages).
pub use keyward_policy::plural;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_style_is_scoped() {
        assert!(!wide());
        let inside = with(
            Style {
                wide: true,
                zone: None,
            },
            wide,
        );
        assert!(inside);
        assert!(!wide());
        assert!(zone().is_none());
    }
}
