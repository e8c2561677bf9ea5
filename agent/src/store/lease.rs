//! The lease on what the agent caches from a shared store: renewed each
//! time the store is heard from (a notification, an answered ping); past
//! its length the cache is not trusted for protect operations or
//! administrator actions until the store answers again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// See the module docs.
#[derive(Debug)]
pub struct Lease {
    origin: Instant,
    /// Milliseconds from `origin` to the last word from the store.
    heard: AtomicU64,
    length: Duration,
    /// Whether the lapse has been logged (once per outage).
    lapse_logged: AtomicBool,
}

impl Lease {
    /// A lease of `length`, renewed now.
    pub fn new(length: Duration) -> Lease {
        Lease {
            origin: Instant::now(),
            heard: AtomicU64::new(0),
            length,
            lapse_logged: AtomicBool::new(false),
        }
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX)
    }

    /// The store was heard from now.
    pub fn renew(&self) {
        self.heard
            .fetch_max(self.millis(Instant::now()), Ordering::Relaxed);
        if self.lapse_logged.swap(false, Ordering::Relaxed) {
            log::warn!("store: heard from again; the lease is renewed and service resumes");
        }
    }

    /// Its length.
    pub fn length(&self) -> Duration {
        self.length
    }

    /// How long since the store was last heard from.
    pub fn silence(&self) -> Duration {
        let now = self.millis(Instant::now());
        Duration::from_millis(now.saturating_sub(self.heard.load(Ordering::Relaxed)))
    }

    /// `None` while the lease is in force; else why the cache is not
    /// trusted (logged once per lapse). One atomic load and a clock read:
    /// cheap enough for every use of a managed key.
    pub fn lapsed(&self) -> Option<String> {
        let silence = self.silence();
        if silence <= self.length {
            return None;
        }
        let why = format!(
            "the shared store has not been heard from for {} s (lease {} s)",
            silence.as_secs(),
            self.length.as_secs()
        );
        if !self.lapse_logged.swap(true, Ordering::Relaxed) {
            log::error!(
                "store: {why}: protect operations with managed keys and administrator actions \
                 are refused until it answers"
            );
        }
        Some(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_force_until_its_length_passes_then_renewed_by_word_from_the_store() {
        let lease = Lease::new(Duration::from_millis(50));
        assert_eq!(lease.lapsed(), None);
        std::thread::sleep(Duration::from_millis(120));
        let why = lease.lapsed().expect("lapsed");
        assert!(why.contains("lease 0 s"), "{why}");
        lease.renew();
        assert_eq!(lease.lapsed(), None);
        assert!(lease.silence() < Duration::from_millis(50));
    }
}
