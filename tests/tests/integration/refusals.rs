//! A process the agent's policy does not admit is told why: its slot says
//! that the agent refused it (not that the agent is away), for cryptoki
//! and for pkcs11-tool alike, and the agent's log names who was refused.
//! Slot flags are truthful: a keyward slot is not a hardware slot.

use std::process::Command;

use keyward_tests::keyward_test;
use keyward_tests::p11::{load, os_threads, Ctx};
use keyward_tests::tools::{require_tool, run_ok};

const FOREIGN_ONLY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/foreign-only.toml");
const REFUSED: &str = "keyward: refused by the agent's policy";

keyward_test!(fn a_refused_process_sees_the_refusal_in_its_slot(tb) with ["--policy-file", FOREIGN_ONLY] {
    tb.require_agent("a policy that admits nobody here");
    let (p11, _raw) = load(&tb);
    p11.initialize(os_threads()).expect("C_Initialize succeeds for a refused process");
    assert!(p11.get_slots_with_token().expect("C_GetSlotList(present)").is_empty());
    let slots = p11.get_all_slots().expect("C_GetSlotList");
    assert!(!slots.is_empty(), "a refused process sees no slot at all");
    for slot in slots {
        let info = p11.get_slot_info(slot).expect("C_GetSlotInfo");
        assert_eq!(info.slot_description().trim_end(), REFUSED, "slot description of a refused process");
        assert!(!info.token_present(), "a refused process sees a token");
        assert!(!info.hardware_slot(), "a keyward slot claims CKF_HW_SLOT");
        assert!(info.removable_device());
    }

    let out = run_ok(Command::new(require_tool("pkcs11-tool", "opensc")).arg("--module").arg(&tb.module).arg("-L"));
    assert!(out.contains(REFUSED), "pkcs11-tool -L does not show the refusal:\n{out}");

    let log = std::fs::read_to_string(tb.path("agent.log")).expect("agent log");
    let uid = nix::unistd::getuid().as_raw();
    let exe = std::env::current_exe().expect("own executable");
    let line = log
        .lines()
        .find(|l| l.contains("refused: no application of the policy matches"))
        .unwrap_or_else(|| panic!("the refusal is not logged:\n{log}"));
    assert!(line.contains(&format!("uid {uid} ")), "the refusal does not name the uid {uid}: {line}");
    assert!(line.contains(&exe.display().to_string()), "the refusal does not name the executable {}: {line}", exe.display());
});

keyward_test!(fn an_admitted_slot_is_no_hardware_slot_and_an_absent_agent_is_named_so(tb) {
    let ctx = Ctx::new(&tb);
    let info = ctx.p11.get_slot_info(ctx.slot).expect("C_GetSlotInfo");
    assert!(info.token_present());
    assert!(!info.hardware_slot(), "a keyward slot claims CKF_HW_SLOT");
    assert!(info.removable_device());
    drop(ctx);

    tb.require_agent("stopping the agent");
    tb.stop_agent();
    let (p11, _raw) = load(&tb);
    p11.initialize(os_threads()).expect("C_Initialize without an agent");
    let slot = p11.get_all_slots().expect("C_GetSlotList")[0];
    let info = p11.get_slot_info(slot).expect("C_GetSlotInfo");
    assert_eq!(info.slot_description().trim_end(), "keyward (agent unreachable)");
    assert!(!info.hardware_slot(), "an absent agent's slot claims CKF_HW_SLOT");
});
