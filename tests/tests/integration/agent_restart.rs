//! The agent going away and coming back: calls fail fast while it is gone,
//! the module reconnects by itself, and with no agent at all the module
//! still initialises and shows an empty slot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki_sys::*;
use keyward_tests::p11::{ec_pair, expect_err_in, load, os_threads, rv_error, Ctx, P256_PARAMS};
use keyward_tests::raw::{rv_name, Out};
use keyward_tests::{assert_rv, keyward_test};

/// Codes acceptable for a call whose agent is gone.
const AGENT_GONE: &[RvError] = &[
    RvError::DeviceRemoved,
    RvError::TokenNotPresent,
    RvError::SessionHandleInvalid,
    RvError::SessionClosed,
    RvError::DeviceError,
];

struct Call {
    start: Instant,
    took: Duration,
    result: Result<(), RvError>,
}

keyward_test!(fn agent_killed_while_signing_then_restarted(tb) {
    tb.require_agent("killing the agent");
    let ctx = Ctx::new(&tb);
    let s = ctx.user();
    let (_, key) = ec_pair(&s, P256_PARAMS, "survivor", true);
    let stop = AtomicBool::new(false);
    let calls = Mutex::new(Vec::<Call>::new());
    let killed_at = std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            // Its own session (login is per application).
            let ws = ctx.rw();
            while !stop.load(Ordering::SeqCst) {
                let start = Instant::now();
                let r = ws.sign(&Mechanism::Ecdsa, key, &[7u8; 32]);
                let took = start.elapsed();
                calls.lock().unwrap().push(Call { start, took, result: r.map(|_| ()).map_err(|e| rv_error(&e)) });
            }
        });
        // Let it sign for a while, kill the agent, let it try for a while.
        let deadline = Instant::now() + Duration::from_secs(10);
        while calls.lock().unwrap().iter().filter(|c| c.result.is_ok()).count() < 5 {
            assert!(Instant::now() < deadline, "no successful signature before the kill");
            std::thread::sleep(Duration::from_millis(10));
        }
        tb.kill_agent();
        let killed_at = Instant::now();
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::SeqCst);
        let joined = Instant::now();
        worker.join().expect("the signing thread panicked");
        assert!(joined.elapsed() < Duration::from_secs(2), "the signing thread took {:?} to notice the stop", joined.elapsed());
        killed_at
    });
    let calls = calls.into_inner().unwrap();
    let after: Vec<&Call> = calls.iter().filter(|c| c.start >= killed_at).collect();
    assert!(!after.is_empty(), "no call was made after the kill");
    for c in &after {
        match c.result {
            Ok(()) => panic!("a signature succeeded after the agent was killed"),
            Err(rv) => assert!(AGENT_GONE.contains(&rv), "call after the kill answered {rv:?}"),
        }
        assert!(c.took < Duration::from_secs(2), "a call took {:?} with the agent gone", c.took);
    }
    // The call in flight at the kill returned within the bound too.
    let slowest = calls.iter().map(|c| c.took).max().unwrap_or_default();
    assert!(slowest < Duration::from_secs(2), "slowest call {slowest:?}");
    println!("{} calls after the kill, slowest call {slowest:?}", after.len());

    // Slot calls with the agent down.
    let (rv, info) = ctx.raw.slot_info(ctx.slot_id());
    assert_rv!(rv, CKR_OK, "C_GetSlotInfo with the agent down");
    assert_eq!(info.flags & CKF_TOKEN_PRESENT, 0, "token still shown as present with the agent down");
    expect_err_in(ctx.p11.open_rw_session(ctx.slot), &[RvError::TokenNotPresent, RvError::DeviceRemoved]);

    tb.start_agent();
    // Same process, same loaded module: a new session works.
    let deadline = Instant::now() + Duration::from_secs(5);
    let slot = loop {
        let present = ctx.p11.get_slots_with_token().expect("C_GetSlotList after the restart");
        let found = present.into_iter().find(|&sl| {
            ctx.p11.get_token_info(sl).map(|i| i.label().trim_end() == tb.token).unwrap_or(false)
        });
        if let Some(sl) = found {
            break sl;
        }
        assert!(Instant::now() < deadline, "the token did not come back within 5 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    let s2 = ctx.p11.open_rw_session(slot).expect("C_OpenSession after the restart");
    s2.login(UserType::User, Some(&ctx.pin())).expect("login after the restart");
    let keys = s2
        .find_objects(&[Attribute::Label(b"survivor".to_vec()), Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .expect("find the token key");
    assert_eq!(keys.len(), 1, "the token key survives the restart");
    s2.sign(&Mechanism::Ecdsa, keys[0], &[8u8; 32]).expect("sign after the restart");
    // The session from before the restart is gone.
    let rv = ctx.raw.session_info(s.handle()).0;
    assert!(
        rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED || rv == CKR_DEVICE_REMOVED,
        "old session after the restart: {}",
        rv_name(rv)
    );
});

keyward_test!(fn agent_stopped_and_started_reconnects(tb) {
    tb.require_agent("stopping the agent");
    let ctx = Ctx::new(&tb);
    {
        let s = ctx.user();
        s.generate_random_vec(8).expect("random before the stop");
    }
    tb.stop_agent();
    let t = Instant::now();
    let r = ctx.p11.open_ro_session(ctx.slot);
    assert!(t.elapsed() < Duration::from_secs(2), "C_OpenSession took {:?} with the agent stopped", t.elapsed());
    expect_err_in(r, &[RvError::TokenNotPresent, RvError::DeviceRemoved]);
    tb.start_agent();
    let s = ctx.p11.open_ro_session(ctx.slot).expect("C_OpenSession after the agent is back");
    s.generate_random_vec(8).expect("random after the restart");
});

keyward_test!(fn no_agent_at_all(tb) {
    tb.require_agent("stopping the agent");
    tb.kill_agent();
    let (p11, raw) = load(&tb);
    let t = Instant::now();
    p11.initialize(os_threads()).expect("C_Initialize without an agent");
    assert!(t.elapsed() < Duration::from_secs(2), "C_Initialize took {:?}", t.elapsed());
    let present = raw.slot_list(true, Out::Cap(16));
    assert_rv!(present.rv, CKR_OK, "C_GetSlotList(tokenPresent) without an agent");
    let all = raw.slot_list(false, Out::Cap(16));
    assert_rv!(all.rv, CKR_OK, "C_GetSlotList without an agent");
    assert!(!all.data.is_empty(), "no slot at all without an agent");
    for &slot in &all.data {
        assert!(!present.data.contains(&slot), "slot {slot} listed with a token without an agent");
        let (rv, info) = raw.slot_info(slot);
        assert_rv!(rv, CKR_OK, "C_GetSlotInfo without an agent");
        assert_eq!(info.flags & CKF_TOKEN_PRESENT, 0, "CKF_TOKEN_PRESENT set without an agent");
        assert_rv!(raw.token_info(slot).0, CKR_TOKEN_NOT_PRESENT, "C_GetTokenInfo without an agent");
        let t = Instant::now();
        assert_rv!(raw.open_session(slot, CKF_SERIAL_SESSION).0, CKR_TOKEN_NOT_PRESENT, "C_OpenSession without an agent");
        assert!(t.elapsed() < Duration::from_secs(2));
    }
    // The agent comes up later: the module finds it by itself.
    tb.start_agent();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let present = raw.slot_list(true, Out::Cap(16));
        if present.rv == CKR_OK && !present.data.is_empty() {
            let (rv, h) = raw.open_session(present.data[0], CKF_SERIAL_SESSION);
            assert_rv!(rv, CKR_OK, "C_OpenSession once the agent is up");
            assert_rv!(raw.close_session(h), CKR_OK);
            break;
        }
        assert!(Instant::now() < deadline, "the token did not appear within 5 s of the agent starting");
        std::thread::sleep(Duration::from_millis(50));
    }
    p11.finalize().expect("C_Finalize");
});

/// Polls `C_WaitForSlotEvent(CKF_DONT_BLOCK)` until it reports an event or
/// `bound` passes; returns the slot. Every answer in between must be
/// `CKR_NO_EVENT`.
fn poll_slot_event(ctx: &Ctx, bound: Duration, what: &str) -> CK_SLOT_ID {
    let deadline = Instant::now() + bound;
    loop {
        let (rv, slot) = ctx.raw.wait_for_slot_event(CKF_DONT_BLOCK);
        match rv {
            CKR_OK => return slot,
            CKR_NO_EVENT => {}
            other => panic!(
                "{what}: C_WaitForSlotEvent(CKF_DONT_BLOCK) answered {}",
                rv_name(other)
            ),
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no slot event within {bound:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

keyward_test!(fn slot_events_when_the_agent_goes_and_comes_back(tb) {
    tb.require_agent("slot events from the agent going away");
    let ctx = Ctx::new(&tb);
    // Argument checks.
    assert_rv!(ctx.raw.wait_for_slot_event_bad(CKF_DONT_BLOCK, true), CKR_ARGUMENTS_BAD, "NULL pSlot");
    assert_rv!(ctx.raw.wait_for_slot_event_bad(CKF_DONT_BLOCK, false), CKR_ARGUMENTS_BAD, "non-NULL pReserved");
    // Nothing happened yet: no event, several times.
    for _ in 0..3 {
        let (rv, _) = ctx.raw.wait_for_slot_event(CKF_DONT_BLOCK);
        assert_rv!(rv, CKR_NO_EVENT, "C_WaitForSlotEvent(CKF_DONT_BLOCK) with the agent up");
    }
    let s = ctx.user();
    s.generate_random_vec(8).expect("the agent serves");

    tb.kill_agent();
    let slot = poll_slot_event(&ctx, Duration::from_secs(5), "after the agent was killed");
    assert_eq!(slot, ctx.slot_id(), "the event names the token's slot");
    let (rv, info) = ctx.raw.slot_info(slot);
    assert_rv!(rv, CKR_OK, "C_GetSlotInfo after the event");
    assert_eq!(info.flags & CKF_TOKEN_PRESENT, 0, "the token is shown as present after the removal event");
    // The event is reported once.
    let (rv, _) = ctx.raw.wait_for_slot_event(CKF_DONT_BLOCK);
    assert_rv!(rv, CKR_NO_EVENT, "a second poll with the agent still down");

    tb.start_agent();
    let slot = poll_slot_event(&ctx, Duration::from_secs(5), "after the agent was restarted");
    assert_eq!(slot, ctx.slot_id(), "the insertion event names the token's slot");
    let (rv, info) = ctx.raw.slot_info(slot);
    assert_rv!(rv, CKR_OK);
    assert_ne!(info.flags & CKF_TOKEN_PRESENT, 0, "the token is absent after the insertion event");
    let (rv, _) = ctx.raw.wait_for_slot_event(CKF_DONT_BLOCK);
    assert_rv!(rv, CKR_NO_EVENT, "a poll after the insertion was reported");
    let s2 = ctx.user();
    s2.generate_random_vec(8).expect("a new session after the insertion event");
});

keyward_test!(fn blocking_wait_for_slot_event_sees_the_kill(tb) {
    tb.require_agent("slot events from the agent going away");
    let ctx = Ctx::new(&tb);
    let (rv, _) = ctx.raw.wait_for_slot_event(CKF_DONT_BLOCK);
    assert_rv!(rv, CKR_NO_EVENT, "baseline poll");
    let slot = std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let start = Instant::now();
            let r = ctx.raw.wait_for_slot_event(0);
            (r, start.elapsed())
        });
        // The waiter blocks while nothing happens.
        std::thread::sleep(Duration::from_millis(300));
        assert!(!waiter.is_finished(), "a blocking C_WaitForSlotEvent returned with nothing to report");
        tb.kill_agent();
        let ((rv, slot), took) = waiter.join().expect("the waiting thread panicked");
        assert_rv!(rv, CKR_OK, "blocking C_WaitForSlotEvent after the kill");
        assert!(took < Duration::from_secs(10), "the blocking wait took {took:?}");
        slot
    });
    assert_eq!(slot, ctx.slot_id());
    tb.start_agent();
});

keyward_test!(fn sigterm_stops_the_agent_even_when_its_socket_files_are_gone(tb) {
    tb.require_agent("stopping the agent");
    let pid = tb.agent_pid();
    std::fs::remove_file(&tb.socket).expect("remove the application socket file");
    std::fs::remove_file(&tb.admin_socket).expect("remove the admin socket file");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM)
        .expect("SIGTERM the agent");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
    {
        assert!(Instant::now() < deadline, "the agent did not stop within 5 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::fs::read_to_string(tb.path("agent.log")).expect("the agent's log");
    assert!(log.contains("stopped"), "no orderly stop in the log:\n{log}");
    tb.start_agent();
});
