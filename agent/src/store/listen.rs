//! The listener: one session per agent on the shared store's channel
//! (`LISTEN keyward`). Each notification reloads what it names in the
//! agent's view, so a change made through any agent is in force here as
//! soon as it is committed there; a ping when the channel is quiet renews
//! the lease. A broken session is made again, then the whole view is
//! reloaded (notifications sent while it was down are lost). A policy
//! another agent carried out under dual control (an executed
//! `policy-apply` request) is put in force here too.

use std::sync::{Arc, Weak};
use std::time::Duration;

use fallible_iterator::FallibleIterator;
use keyward_inventory::postgres::{Notice, PgInventory, CHANNEL};

use super::Lease;
use crate::lifecycle::Lifecycle;

/// How often the listener speaks to the store when nothing arrives: a
/// quarter of the lease (at least 100 ms, at most 2 s), so a live store
/// renews it well before it lapses.
fn ping_every(lease: Duration) -> Duration {
    (lease / 4).clamp(Duration::from_millis(100), Duration::from_secs(2))
}

/// Starts the listener thread; it ends when `core` is gone.
pub fn spawn(
    store: Arc<PgInventory>,
    core: Weak<Lifecycle>,
    lease: Arc<Lease>,
) -> Result<(), String> {
    std::thread::Builder::new()
        .name("store-listen".into())
        .spawn(move || run(&store, &core, &lease))
        .map(drop)
        .map_err(|e| format!("cannot start the store listener: {e}"))
}

fn run(store: &PgInventory, core: &Weak<Lifecycle>, lease: &Lease) {
    let every = ping_every(lease.length());
    let mut down_since: Option<std::time::Instant> = None;
    loop {
        if core.strong_count() == 0 {
            return;
        }
        match listen(store, core, lease, every) {
            Ok(()) => return,
            Err(e) => {
                if down_since.is_none() {
                    log::error!("store: the notification channel is down: {e}; trying again");
                    down_since = Some(std::time::Instant::now());
                }
                std::thread::sleep(every);
            }
        }
        if let Some(since) = down_since.filter(|_| lease.lapsed().is_none()) {
            log::warn!(
                "store: the notification channel is back after {} s",
                since.elapsed().as_secs()
            );
            down_since = None;
        }
    }
}

/// One session: LISTEN, reload everything, then apply notifications and
/// ping until the session breaks (`Err`) or the agent is gone (`Ok`).
fn listen(
    store: &PgInventory,
    core: &Weak<Lifecycle>,
    lease: &Lease,
    every: Duration,
) -> Result<(), String> {
    let mut client = store.connect().map_err(|e| e.to_string())?;
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .map_err(|e| e.to_string())?;
    {
        let Some(core) = core.upgrade() else {
            return Ok(());
        };
        reload_all(&core)?;
    }
    lease.renew();
    loop {
        // Waits for the first notice (or the ping's time), then takes
        // those already received with it, without waiting again.
        let mut heard = Vec::new();
        {
            let mut notifications = client.notifications();
            let first = notifications
                .timeout_iter(every)
                .next()
                .map_err(|e| e.to_string())?;
            if let Some(n) = first {
                heard.push(n.payload().to_owned());
                let mut pending = notifications.iter();
                while let Some(n) = pending.next().map_err(|e| e.to_string())? {
                    heard.push(n.payload().to_owned());
                    if heard.len() >= 1024 {
                        break;
                    }
                }
            }
        }
        let Some(core) = core.upgrade() else {
            return Ok(());
        };
        if heard.is_empty() {
            client.simple_query("").map_err(|e| e.to_string())?;
        } else {
            apply(&core, &heard)?;
        }
        lease.renew();
    }
}

/// Reloads what the notifications name.
fn apply(core: &Lifecycle, payloads: &[String]) -> Result<(), String> {
    let notices: Option<Vec<Notice>> = payloads.iter().map(|p| Notice::parse(p)).collect();
    let Some(mut notices) = notices else {
        // A notice this build does not know: a newer agent's change.
        return reload_all(core);
    };
    notices.sort_by_key(Notice::payload);
    notices.dedup();
    for notice in notices {
        match notice {
            Notice::Key(id) => {
                // As a change made here: the uses that passed the old check
                // have ended (within the bound), or are settled against
                // the new view.
                let _held = core.gates.change(id);
                core.keys.refresh(id).map_err(|e| e.to_string())?;
            }
            Notice::Request(_) => {
                core.sign_decisions.ring();
                follow_policy(core);
            }
            Notice::Owners => core
                .keys
                .owners
                .reload(core.keys.inventory())
                .map_err(|e| e.to_string())?,
        }
    }
    Ok(())
}

/// Reloads the whole view: every key, the object owners, and wakes the
/// calls waiting for an approval.
fn reload_all(core: &Lifecycle) -> Result<(), String> {
    {
        let _held = core.gates.change_all();
        core.keys.refresh_all().map_err(|e| e.to_string())?;
    }
    core.keys
        .owners
        .reload(core.keys.inventory())
        .map_err(|e| e.to_string())?;
    core.sign_decisions.ring();
    follow_policy(core);
    Ok(())
}

/// Puts in force the policy another agent of the fleet carried out.
fn follow_policy(life: &Lifecycle) {
    match life.follow_approved_policy() {
        Ok(None) => {}
        Ok(Some(outcome)) => log::warn!("store: the fleet's approved policy followed: {outcome}"),
        Err(e) => log::error!(
            "store: the fleet's approved policy cannot be followed: {}",
            e.message
        ),
    }
}
