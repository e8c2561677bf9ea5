//! The agent's one clock for decisions: wall time that never goes back.
//!
//! Every decision that depends on the date (cryptoperiods, grants,
//! approval requests, the scheduler) and every record of the trail takes
//! its time from [`now`]. It is the wall clock, but never earlier than the
//! high-water mark: the latest time the agent has used. A wall clock
//! stepped back (a wrong NTP step, an administrator's `date -s`) therefore
//! brings nothing expired back to life and writes no record dated before
//! one already written; while the wall clock is behind, [`Watch`] moves
//! the mark on at the pace of the monotonic clock, so that dates keep
//! passing at their real pace.
//!
//! At start the mark is raised to the newest record of the trail
//! ([`raise_to`]), so a step back while the agent was down is caught too.
//! A step of the wall clock (back, or forward by more than the monotonic
//! clock moved) beyond [`STEP`] is reported by [`Watch::observe`]; the
//! scheduler logs it, records it in the trail and runs a pass at once.
//!
//! On the request path [`now`] costs the wall clock read it always made,
//! an atomic load and compare, and an atomic maximum when the wall clock
//! has moved past the mark: no lock and no other system call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A step of the wall clock at least this large, against the monotonic
/// clock between two observations, is reported.
pub const STEP: Duration = Duration::from_secs(2);

/// Wall time that never goes back: the high-water mark of the times it has
/// handed out (microseconds since the epoch).
#[derive(Debug, Default)]
pub struct Clock {
    high_us: AtomicU64,
}

/// The agent's clock.
static CLOCK: Clock = Clock {
    high_us: AtomicU64::new(0),
};

/// The time for decisions and records: the wall clock, never earlier than
/// any time handed out before (nor than the trail's newest record).
pub fn now() -> SystemTime {
    from_us(CLOCK.at(wall_us()))
}

/// Raises the mark to `t` (the trail's newest record at start).
pub fn raise_to(t: SystemTime) {
    CLOCK.raise(to_us(t));
}

/// The agent's clock, for its [`Watch`].
pub fn agent_clock() -> &'static Clock {
    &CLOCK
}

fn wall_us() -> u64 {
    to_us(SystemTime::now())
}

/// Microseconds since the epoch (0 before it).
pub fn to_us(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The time `us` microseconds after the epoch.
pub fn from_us(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us)
}

impl Clock {
    /// The time to use when the wall clock reads `wall_us`.
    pub fn at(&self, wall_us: u64) -> u64 {
        let high = self.high_us.load(Ordering::Relaxed);
        if wall_us > high {
            // Another thread may have raised it meanwhile: the larger wins.
            let before = self.high_us.fetch_max(wall_us, Ordering::Relaxed);
            before.max(wall_us)
        } else {
            high
        }
    }

    /// Raises the mark to `us` (never lowers it).
    pub fn raise(&self, us: u64) {
        self.high_us.fetch_max(us, Ordering::Relaxed);
    }

    /// The mark (microseconds since the epoch).
    pub fn high_water(&self) -> u64 {
        self.high_us.load(Ordering::Relaxed)
    }
}

/// A step of the wall clock between two observations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Stepped back by this much (against the monotonic clock).
    Back(Duration),
    /// Stepped forward by this much more than the monotonic clock moved.
    Forward(Duration),
}

impl Step {
    /// The operation of its trail record.
    pub const OPERATION: &'static str = "clock-step";

    /// What the log and the trail say about it; `kept`: the time
    /// decisions keep to (microseconds since the epoch).
    pub fn describe(&self, kept: u64) -> String {
        match self {
            Step::Back(d) => format!(
                "the wall clock stepped back by {} s; lifecycle decisions and records keep to {} \
                 and move on with the monotonic clock until the wall clock passes it",
                d.as_secs(),
                crate::audit::format_us(kept)
            ),
            Step::Forward(d) => format!(
                "the wall clock stepped forward by {} s more than the monotonic clock moved; \
                 dates up to {} are taken as passed",
                d.as_secs(),
                crate::audit::format_us(kept)
            ),
        }
    }
}

/// Compares the wall clock with the monotonic clock between calls (the
/// scheduler's thread calls it about once a second).
#[derive(Debug, Default)]
pub struct Watch {
    last: Option<(u64, Duration)>,
}

impl Watch {
    /// One observation: the wall clock reads `wall_us` when the monotonic
    /// clock reads `mono`. While the wall clock is behind the mark, the
    /// mark moves on by the monotonic time since the last observation.
    /// A step of [`STEP`] or more is returned.
    pub fn observe(&mut self, clock: &Clock, wall_us: u64, mono: Duration) -> Option<Step> {
        let Some((last_wall, last_mono)) = self.last.replace((wall_us, mono)) else {
            clock.raise(wall_us);
            return None;
        };
        let elapsed = u64::try_from(mono.saturating_sub(last_mono).as_micros()).unwrap_or(u64::MAX);
        let high = clock.high_water();
        if wall_us < high {
            clock.raise(high.saturating_add(elapsed));
        } else {
            clock.raise(wall_us);
        }
        let expected = last_wall.saturating_add(elapsed);
        let step = STEP.as_micros() as u64;
        if wall_us.saturating_add(step) <= expected {
            Some(Step::Back(Duration::from_micros(expected - wall_us)))
        } else if wall_us >= expected.saturating_add(step) {
            Some(Step::Forward(Duration::from_micros(wall_us - expected)))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_800_000_000_000_000;
    const S: u64 = 1_000_000;
    const DAY: u64 = 86_400 * S;

    #[test]
    fn follows_the_wall_clock_forward() {
        let c = Clock::default();
        assert_eq!(c.at(T), T);
        assert_eq!(c.at(T + 5), T + 5);
        assert_eq!(c.at(T + DAY), T + DAY);
        assert_eq!(c.high_water(), T + DAY);
    }

    #[test]
    fn never_goes_back_when_the_wall_clock_does() {
        let c = Clock::default();
        c.at(T + DAY);
        assert_eq!(c.at(T), T + DAY, "a step back of a day");
        assert_eq!(c.at(T + DAY - 1), T + DAY, "a step back of a microsecond");
        assert_eq!(
            c.at(T + DAY + 1),
            T + DAY + 1,
            "the wall clock passed the mark"
        );
    }

    #[test]
    fn raise_never_lowers_the_mark() {
        let c = Clock::default();
        c.raise(T);
        c.raise(T - DAY);
        assert_eq!(c.high_water(), T);
        assert_eq!(
            c.at(T - 365 * DAY),
            T,
            "the trail's newest record bounds it at start"
        );
    }

    #[test]
    fn threads_racing_never_see_the_clock_go_back() {
        let c = std::sync::Arc::new(Clock::default());
        let handles: Vec<_> = (0..4u64)
            .map(|k| {
                let c = c.clone();
                std::thread::spawn(move || {
                    let mut last = 0;
                    for i in 0..10_000u64 {
                        // Each thread's wall clock jitters back and forth.
                        let wall = T + i * 10 + if i % 3 == k % 3 { 0 } else { 25 };
                        let t = c.at(wall);
                        assert!(t >= last, "went back from {last} to {t}");
                        assert!(t >= wall);
                        last = t;
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("a thread panicked");
        }
    }

    #[test]
    fn the_watch_sees_a_step_back_and_moves_the_mark_on_monotonically() {
        let c = Clock::default();
        let mut w = Watch::default();
        let m = Duration::from_secs(1000);
        assert_eq!(w.observe(&c, T, m), None);
        assert_eq!(w.observe(&c, T + S, m + Duration::from_secs(1)), None);
        // The wall clock steps back a day during the next second.
        let step = w.observe(&c, T + 2 * S - DAY, m + Duration::from_secs(2));
        assert_eq!(step, Some(Step::Back(Duration::from_secs(86_400))));
        assert_eq!(
            c.high_water(),
            T + 2 * S,
            "the mark moved on by the second that passed"
        );
        assert_eq!(c.at(T + 2 * S - DAY), T + 2 * S);
        // Ten seconds later (monotonic), the wall clock still a day behind:
        // no new step, and the mark moved on by ten seconds.
        let again = w.observe(&c, T + 12 * S - DAY, m + Duration::from_secs(12));
        assert_eq!(again, None);
        assert_eq!(c.high_water(), T + 12 * S);
        assert_eq!(c.at(T + 12 * S - DAY), T + 12 * S);
    }

    #[test]
    fn the_watch_sees_a_step_forward_beyond_the_monotonic_clock() {
        let c = Clock::default();
        let mut w = Watch::default();
        let m = Duration::from_secs(5);
        w.observe(&c, T, m);
        let step = w.observe(&c, T + DAY + S, m + Duration::from_secs(1));
        assert_eq!(step, Some(Step::Forward(Duration::from_secs(86_400))));
        assert_eq!(c.high_water(), T + DAY + S);
    }

    #[test]
    fn small_drift_and_slow_observations_are_no_step() {
        let c = Clock::default();
        let mut w = Watch::default();
        let m = Duration::from_secs(5);
        w.observe(&c, T, m);
        // A minute between observations (a long scheduler pass), the wall
        // clock slewed by half a second.
        assert_eq!(
            w.observe(&c, T + 60 * S + S / 2, m + Duration::from_secs(60)),
            None
        );
        assert_eq!(w.observe(&c, T + 61 * S, m + Duration::from_secs(61)), None);
        // Back by just under the threshold: no step, and the mark moves on
        // with the monotonic clock.
        let expected = T + 62 * S;
        let wall = expected - STEP.as_micros() as u64 + 1;
        assert_eq!(w.observe(&c, wall, m + Duration::from_secs(62)), None);
        assert_eq!(c.high_water(), T + 62 * S);
    }

    #[test]
    fn describes_the_step_with_the_time_kept() {
        let back = Step::Back(Duration::from_secs(86_400)).describe(T);
        assert!(back.contains("stepped back by 86400 s"), "{back}");
        assert!(back.contains("2027-01-15"), "{back}");
        let fwd = Step::Forward(Duration::from_secs(3600)).describe(T);
        assert!(fwd.contains("forward by 3600 s"), "{fwd}");
    }
}
