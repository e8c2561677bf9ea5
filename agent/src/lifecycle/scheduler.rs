//! The scheduler: rotations and deactivations whose dates have passed,
//! and discovery, every pass.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keyward_inventory::Actor;
use keyward_protocol::admin::KeyAction;

use crate::keys::secs;

use super::*;

/// When the scheduler's first pass runs after a start.
pub const FIRST_PASS: Duration = Duration::from_secs(1);

/// How often the scheduler runs after its first pass.
pub const EVERY: Duration = Duration::from_secs(60);

/// How often the scheduler's thread compares the wall clock with the
/// monotonic clock.
pub const WATCH: Duration = Duration::from_secs(1);

impl Lifecycle {
    /// One scheduler pass at `now`: active keys past their protect period
    /// are deactivated; active keys whose next rotation has come are
    /// rotated; pending requests past their expiry are closed as expired.
    /// All are recorded with actor [`SCHEDULER`]. Failures are logged and
    /// retried at the next pass.
    pub fn tick(&self, now: SystemTime) {
        let at = secs(now);
        // On a shared store, one agent of the fleet does the scheduled
        // work: a key is rotated once, not once per agent.
        match self.keys.inventory().leads() {
            Ok(true) => {}
            Ok(false) => {
                log::debug!("scheduler: another agent of the fleet leads; nothing to do here");
                return;
            }
            Err(e) => {
                log::warn!("scheduler: cannot tell whether this agent leads: {e}; pass skipped");
                return;
            }
        }
        self.scheduler_ran
            .store(at, std::sync::atomic::Ordering::Relaxed);
        self.expire_requests(at);
        for key in self.keys.all() {
            if key.record.state != KeyState::Active {
                continue;
            }
            let Some(token) = self.token_labelled(&key.record.token) else {
                continue;
            };
            let t = Target {
                token,
                key: key.clone(),
            };
            let by = (SCHEDULER, &Actor::Scheduler);
            if key.record.protect_until.is_some_and(|p| p <= at) {
                match self.transition_key(
                    &t,
                    KeyAction::Deactivate,
                    by,
                    ("protect period ended", None),
                    now,
                ) {
                    Ok(_) => {
                        log::info!(
                            "scheduler: key {} deactivated (protect period ended)",
                            t.label()
                        )
                    }
                    Err(e) => log::error!(
                        "scheduler: cannot deactivate key {}: {}",
                        t.label(),
                        e.message
                    ),
                }
            } else if key.record.next_rotation.is_some_and(|r| r <= at) {
                match self.rotate_key(&t, by, "scheduled rotation", now) {
                    Ok(v) => {
                        log::info!("scheduler: key {} rotated to version {v}", t.label())
                    }
                    Err(e) => {
                        log::error!("scheduler: cannot rotate key {}: {}", t.label(), e.message)
                    }
                }
            }
        }
        self.discover_shadows();
    }

    /// A step of the wall clock: logged and recorded in the trail (durable,
    /// or held until it can be written), with the time decisions keep to
    /// (`kept`, microseconds).
    pub fn clock_stepped(&self, step: crate::clock::Step, kept: u64) {
        let said = step.describe(kept);
        log::warn!("clock: {said}");
        let mut e = crate::audit::event(
            keyward_inventory::AuditKind::Agent,
            Actor::Agent,
            crate::clock::Step::OPERATION,
        );
        e.reason = said;
        self.audit.durable_or_held(e);
    }

    /// Starts the scheduler thread: [`Lifecycle::tick`] [`FIRST_PASS`] after the
    /// start and then every `every`, until the agent is dropped. Every
    /// second in between it watches the wall clock ([`crate::clock::Watch`]):
    /// a step is logged, recorded in the trail, and followed by a pass at
    /// once.
    pub fn spawn_scheduler(self: &Arc<Lifecycle>, every: Duration) {
        let agent = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("scheduler".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                let mut watch = crate::clock::Watch::default();
                // The first observation: a step from now on is seen.
                watch.observe(
                    crate::clock::agent_clock(),
                    crate::clock::to_us(SystemTime::now()),
                    started.elapsed(),
                );
                // A first pass soon after the start catches up with dates
                // that passed while the agent was down.
                let mut next = started + FIRST_PASS.min(every);
                loop {
                    std::thread::sleep(
                        WATCH.min(next.saturating_duration_since(std::time::Instant::now())),
                    );
                    let clock = crate::clock::agent_clock();
                    let step = watch.observe(
                        clock,
                        crate::clock::to_us(SystemTime::now()),
                        started.elapsed(),
                    );
                    if step.is_none() && std::time::Instant::now() < next {
                        // Nothing to do: the agent is not held (its
                        // shutdown drops the last reference).
                        continue;
                    }
                    let Some(a) = agent.upgrade() else {
                        return;
                    };
                    if let Some(step) = step {
                        a.clock_stepped(step, clock.high_water());
                    }
                    next = std::time::Instant::now() + every;
                    a.tick(crate::clock::now());
                }
            });
        if let Err(e) = spawned {
            log::error!("cannot start the lifecycle scheduler: {e}");
        }
    }
}
